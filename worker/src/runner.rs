//! The worker loop: consume run messages, claim each command in PostgreSQL,
//! run it, record how it ended, then acknowledge the message.
//!
//! Invariants:
//! - a command runs only after its conditional claim matched (a redelivered
//!   message is acknowledged and skipped);
//! - the terminal status and its event are written in one transaction, then
//!   the end marker is published, then the message is acknowledged;
//! - a lost broker connection does not stop running commands; their acks may
//!   then fail, and the redelivery is harmless because of the claim.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};
use rdev_shared::containment::Limit;
use rdev_shared::db::commands::{self, ClaimOutcome, Claimed, Finish};
use rdev_shared::db::outbox::{self, OutboxMessage};
use rdev_shared::db::{DbError, Pool};
use rdev_shared::domain::{self, CommandStatus, EndReason};
use rdev_shared::mq::{
    self, ControlMessage, MqError, OutputEvent, Publisher, RunMessage, Topology,
};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;
use uuid::Uuid;

use rdev_shared::metrics::Metrics;
use rdev_shared::relay::PublishedMarker;
use rdev_shared::telemetry;

use crate::config::Config;
use crate::executor::{Executor, Executors, Job, OUTPUT_CHANNEL_CAPACITY, Outcome};
use crate::interactive::{Activity, INPUT_CHANNEL_CAPACITY, IdleLimit};
use crate::output::{OutputSink, OutputSummary};
use rdev_shared::interactive::StdinMode;

/// First and largest pause between reconnection attempts.
const RECONNECT_MIN: Duration = Duration::from_millis(500);
const RECONNECT_MAX: Duration = Duration::from_secs(10);
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
    /// Marks published outbox rows in batches.
    marker: PublishedMarker,
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
}

impl Worker {
    /// Builds the shared state.
    pub fn new(cfg: Config, worker_id: String, pool: Pool, executors: Executors) -> Self {
        let publisher = Publisher::new(cfg.amqp.clone(), format!("rdev-worker {worker_id}"));
        let metrics = Arc::new(Metrics::new("rdev-worker"));
        publisher.set_metrics(metrics.clone());
        executors.set_metrics(&metrics);
        let marker = PublishedMarker::spawn(pool.clone());
        Self {
            marker,
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

/// Consumes run messages until `stop` fires, then lets running commands
/// finish for the drain period, stops the rest, and returns once every
/// command task has acknowledged its message.
pub async fn consume(worker: Arc<Worker>, stop: CancellationToken) {
    let tracker = TaskTracker::new();
    let concurrency = usize::from(worker.cfg.concurrency);
    let permits = Arc::new(Semaphore::new(concurrency));
    // Signalled whenever a command task ends and frees its slot.
    let freed = Arc::new(Notify::new());
    // Old connections stay open until the end: running commands ack on them.
    let mut connections: Vec<Connection> = Vec::new();
    let mut backoff = RECONNECT_MIN;

    'session: while !stop.is_cancelled() {
        // Commands of an earlier session still hold their slots (their
        // messages went back to the broker with the old channel). The new
        // channel's prefetch counts only the free slots, or this worker would
        // hoard messages idle workers could run; it grows as those commands
        // end. Prefetch 0 means "unlimited", so wait for a free slot first.
        while permits.available_permits() == 0 {
            tokio::select! {
                () = freed.notified() => {}
                () = stop.cancelled() => break 'session,
            }
        }
        let mut prefetch = permits.available_permits().min(concurrency);
        let opened = tokio::select! {
            r = open_consumer(&worker, prefetch) => r,
            () = stop.cancelled() => break,
        };
        let (conn, channel, mut consumer) = match opened {
            Ok(session) => session,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "cannot consume from RabbitMQ");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = stop.cancelled() => break,
                }
                backoff = (backoff * 2).min(RECONNECT_MAX);
                continue;
            }
        };
        backoff = RECONNECT_MIN;
        connections.push(conn);
        worker.consumer_connected.store(true, Ordering::Relaxed);
        tracing::info!(queue = %worker.topology.commands_queue(), prefetch, "consuming commands");
        // Messages of this session not yet acknowledged.
        let in_session = Arc::new(AtomicUsize::new(0));

        loop {
            let next = tokio::select! {
                d = consumer.next() => d,
                () = freed.notified(), if prefetch < concurrency => {
                    // Slots of this session plus the free ones: what this
                    // channel may hold now.
                    let wanted = (permits.available_permits()
                        + in_session.load(Ordering::Acquire))
                    .min(concurrency);
                    if wanted > prefetch {
                        match set_prefetch(&channel, wanted).await {
                            Ok(()) => prefetch = wanted,
                            Err(e) => tracing::warn!(error = %e, "cannot raise the prefetch"),
                        }
                    }
                    continue;
                }
                () = stop.cancelled() => {
                    stop_consuming(&channel, &consumer).await;
                    break 'session;
                }
            };
            let delivery = match next {
                Some(Ok(d)) => d,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "consumer failed; reconnecting");
                    break;
                }
                None => {
                    tracing::warn!("consumer stream ended; reconnecting");
                    break;
                }
            };
            let permit = tokio::select! {
                p = permits.clone().acquire_owned() => p,
                () = stop.cancelled() => {
                    // This delivery stays unacknowledged: the broker gives it
                    // to another worker when our channel closes.
                    stop_consuming(&channel, &consumer).await;
                    break 'session;
                }
            };
            let Ok(permit) = permit else { break 'session };
            in_session.fetch_add(1, Ordering::AcqRel);
            let (w, in_session, freed) = (worker.clone(), in_session.clone(), freed.clone());
            tracker.spawn(async move {
                handle(w, delivery, permit).await;
                in_session.fetch_sub(1, Ordering::AcqRel);
                freed.notify_one();
            });
        }
        worker.consumer_connected.store(false, Ordering::Relaxed);
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = stop.cancelled() => break,
        }
        backoff = (backoff * 2).min(RECONNECT_MAX);
    }
    worker.consumer_connected.store(false, Ordering::Relaxed);

    tracker.close();
    if !tracker.is_empty() {
        tracing::info!(running = tracker.len(), drain = ?worker.cfg.drain(), "draining running commands");
    }
    if tokio::time::timeout(worker.cfg.drain(), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            running = tracker.len(),
            "drain period over; stopping running commands"
        );
        worker.stop_commands.cancel();
        tracker.wait().await;
    }
    for conn in connections {
        let _ = conn.close(200, "worker shutting down".into()).await;
    }
}

async fn stop_consuming(channel: &Channel, consumer: &Consumer) {
    if let Err(e) = channel
        .basic_cancel(consumer.tag(), BasicCancelOptions::default())
        .await
    {
        tracing::debug!(error = %e, "cancelling the consumer failed");
    }
}

/// Sets the channel's prefetch. Channel-wide (`global`), because RabbitMQ
/// applies a changed per-consumer prefetch only to consumers started later,
/// while a channel-wide one takes effect at once; the channel has one
/// consumer, so both mean the same.
/// https://www.rabbitmq.com/docs/consumer-prefetch
async fn set_prefetch(channel: &Channel, prefetch: usize) -> Result<(), MqError> {
    channel
        .basic_qos(
            u16::try_from(prefetch).unwrap_or(u16::MAX),
            BasicQosOptions { global: true },
        )
        .await?;
    Ok(())
}

async fn open_consumer(
    w: &Worker,
    prefetch: usize,
) -> Result<(Connection, Channel, Consumer), MqError> {
    let conn = mq::connect(
        &w.cfg.amqp,
        &format!("rdev-worker {} consumer", w.worker_id),
    )
    .await?;
    let channel = conn.create_channel().await?;
    mq::declare(&channel, &w.topology).await?;
    // Prefetch = free slots: the broker never hands us more than we run.
    set_prefetch(&channel, prefetch).await?;
    let consumer = channel
        .basic_consume(
            w.topology.commands_queue().into(),
            format!("rdev-worker-{}", w.worker_id).into(),
            BasicConsumeOptions {
                no_ack: false,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok((conn, channel, consumer))
}

/// What to tell the broker about a message once its command is handled.
#[derive(Debug, PartialEq, Eq)]
enum Disposition {
    Ack,
    /// The database could not record the outcome: give the message back.
    /// Whoever gets it finds the command not queued and acks it; the reaper
    /// fails the command once its heartbeat stops.
    Requeue,
}

async fn handle(worker: Arc<Worker>, delivery: Delivery, _permit: OwnedSemaphorePermit) {
    worker
        .metrics
        .amqp_consumed_total
        .with_label_values(&["commands"])
        .inc();
    let disposition = match serde_json::from_slice::<RunMessage>(&delivery.data) {
        Ok(msg) => {
            let span = tracing::info_span!(
                "command.execute",
                command_id = %msg.command_id,
                trace_id = tracing::field::Empty
            );
            let headers = mq::header_pairs(&delivery.properties);
            let pairs: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            telemetry::continue_trace(&span, &pairs);
            let priority = delivery
                .properties
                .priority()
                .unwrap_or(rdev_shared::domain::DEFAULT_PRIORITY);
            process(&worker, msg.command_id, priority)
                .instrument(span)
                .await
        }
        Err(e) => {
            tracing::error!(error = %e, "malformed run message; dropping it");
            Disposition::Ack
        }
    };
    let result = match disposition {
        Disposition::Ack => delivery.acker.ack(BasicAckOptions::default()).await,
        Disposition::Requeue => {
            delivery
                .acker
                .nack(BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await
        }
    };
    if let Err(e) = result {
        // The channel went away; the broker redelivers and the claim makes it harmless.
        tracing::warn!(error = %e, "cannot acknowledge the run message");
    }
}

async fn process(w: &Worker, id: Uuid, priority: u8) -> Disposition {
    // One token for every attempt of this claim: a retry after a commit
    // whose answer was lost finds the command running under it, and runs it.
    let token = Uuid::now_v7();
    let claimed = match retry_db("claim", || claim(w, id, token)).await {
        Ok(Claim::Claimed(c, e)) => (*c, e),
        Ok(Claim::AtLimit) => return defer(w, id, priority).await,
        Ok(Claim::NotQueued) => {
            tracing::info!(
                "command is not queued (already claimed, cancelled or finished); skipping"
            );
            return Disposition::Ack;
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot claim the command");
            return Disposition::Requeue;
        }
    };
    let (claimed, started) = claimed;
    let (_running, cancel) = RunningGuard::new(w, id);
    let began = Instant::now();
    tracing::info!(attempt = claimed.command.attempt, "command started");
    if let Some(started) = started {
        announce(w, started).await;
    }
    publish_live(w, id, &OutputEvent::Status).await;

    let timeout_s = claimed.command.timeout_s;
    let (outcome, summary) = if claimed.project_deleted {
        let summary = OutputSummary {
            output_bytes: 0,
            truncated: false,
        };
        (Outcome::FailedToStart("project deleted".into()), summary)
    } else {
        execute(w, claimed, cancel).await
    };
    let finish = finish_of(&outcome, summary, timeout_s, w.stop_commands.is_cancelled());
    w.metrics
        .commands_total
        .with_label_values(&[finish.status.as_str()])
        .inc();
    w.metrics
        .command_duration_seconds
        .observe(began.elapsed().as_secs_f64());
    w.metrics
        .command_output_bytes_total
        .inc_by(u64::try_from(finish.output_bytes).unwrap_or(0));
    tracing::info!(status = %finish.status, exit_code = ?finish.exit_code, error = ?finish.error, "command ended");

    match retry_db("finish", || record_finish(w, id, &finish)).await {
        Ok(Some(event)) => {
            announce(w, event).await;
            publish_live(w, id, &OutputEvent::End).await;
            Disposition::Ack
        }
        Ok(None) => {
            tracing::info!(
                "command was finished elsewhere (reaped or cancelled); keeping that outcome"
            );
            Disposition::Ack
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot record the command's end; giving the message back");
            Disposition::Requeue
        }
    }
}

async fn execute(
    w: &Worker,
    claimed: Claimed,
    cancel: CancellationToken,
) -> (Outcome, OutputSummary) {
    let no_output = OutputSummary {
        output_bytes: 0,
        truncated: false,
    };
    // Read now, not at enqueue: a rotation applies to every command that
    // starts after it. A command that cannot have its secrets never runs.
    let secrets = match retry_db("secrets", || {
        crate::secrets::resolve(&w.pool, &w.worker_id, &claimed.command, &claimed.secrets)
    })
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(refused)) => return (Outcome::FailedToStart(refused.0), no_output),
        Err(e) => {
            tracing::error!(error = %e, "cannot read the command's secrets");
            return (
                Outcome::FailedToStart("cannot read the command's secrets".into()),
                no_output,
            );
        }
    };
    let command = claimed.command;
    let interactive = command.stdin == StdinMode::Pipe || command.tty.is_some();
    let mut env = claimed.project_env;
    env.extend(command.env);
    // The API refuses these; rows stored before it did are filtered here.
    env.retain(|name, _| {
        let denied = rdev_shared::containment::env_name_denied(name, false);
        if denied {
            tracing::warn!(name, "dropping a denied environment variable");
        }
        !denied
    });
    let job = Job {
        name: command.id.to_string(),
        spec: command.spec,
        env,
        stdin: claimed.stdin,
        stdin_pipe: command.stdin == StdinMode::Pipe,
        tty: command.tty,
        executor: claimed.executor,
        project: command.project,
        timeout: Duration::from_secs(u64::try_from(command.timeout_s).unwrap_or(1).max(1)),
        network: claimed.network,
        limits: claimed.limits,
        secrets: secrets.job,
    };
    let (tx, rx) = mpsc::channel(OUTPUT_CHANNEL_CAPACITY);
    let sink = OutputSink::new(
        command.id,
        w.worker_id.clone(),
        claimed.max_output_bytes,
        w.pool.clone(),
        w.publisher.clone(),
    )
    .with_redaction(secrets.redaction);
    if !interactive {
        return tokio::join!(w.executors.run(job, tx, None, cancel), sink.consume(rx));
    }

    // Interactive: a pump feeds input in order; output and input both count
    // as activity for the idle limit.
    let activity = Activity::new();
    let (registration, notices) = w.inputs.register(command.id);
    let (input_tx, input_rx) = mpsc::channel(INPUT_CHANNEL_CAPACITY);
    let idle = IdleLimit {
        after: w.cfg.interactive_idle,
        stop: cancel.clone(),
        fired: Arc::new(AtomicBool::new(false)),
    };
    let pump = tokio::spawn(crate::interactive::pump(
        w.pool.clone(),
        command.id,
        notices,
        input_tx,
        activity.clone(),
        idle.clone(),
    ));
    let (watched_tx, mut watched_rx) = mpsc::channel(OUTPUT_CHANNEL_CAPACITY);
    let watch = async move {
        while let Some(chunk) = watched_rx.recv().await {
            activity.touch();
            if tx.send(chunk).await.is_err() {
                break;
            }
        }
    };
    let ((outcome, summary), ()) = tokio::join!(
        async {
            tokio::join!(
                w.executors.run(job, watched_tx, Some(input_rx), cancel),
                sink.consume(rx)
            )
        },
        watch
    );
    pump.abort();
    drop(registration);
    let outcome = match outcome {
        Outcome::Cancelled if idle.fired.load(Ordering::Acquire) => Outcome::Idle(idle.after),
        other => other,
    };
    (outcome, summary)
}

/// Maps how a command ended to the facts recorded in PostgreSQL.
fn finish_of(outcome: &Outcome, out: OutputSummary, timeout_s: i32, stopping: bool) -> Finish {
    use EndReason as R;
    let (status, exit_code, error, reason, signal) = match outcome {
        Outcome::Exited(0) => (CommandStatus::Succeeded, Some(0), None, R::Exited, None),
        Outcome::Exited(code) => (CommandStatus::Failed, Some(*code), None, R::Exited, None),
        Outcome::Signaled(sig) => (
            CommandStatus::Failed,
            Some(128 + sig),
            Some(format!("terminated by signal {sig}")),
            R::Signaled,
            Some(*sig),
        ),
        Outcome::TimedOut => (
            CommandStatus::TimedOut,
            None,
            Some(format!("timed out after {timeout_s}s")),
            R::TimedOut,
            None,
        ),
        // The end of the drain period stops commands too: that is a failure,
        // not the client's cancel.
        Outcome::Cancelled if stopping => (
            CommandStatus::Failed,
            None,
            Some(SHUTDOWN_ERROR.into()),
            R::WorkerShutdown,
            None,
        ),
        Outcome::Cancelled => (
            CommandStatus::Cancelled,
            None,
            Some("cancelled on request".into()),
            R::Cancelled,
            None,
        ),
        Outcome::Limit {
            limit,
            exit_code,
            signal,
        } => {
            let (reason, what) = match limit {
                Limit::Memory => (R::MemoryLimit, "memory"),
                Limit::Pids => (R::PidsLimit, "process"),
                Limit::Cpu => (R::CpuLimit, "CPU time"),
                Limit::FileSize => (R::FileSizeLimit, "file size"),
                Limit::OpenFiles => (R::Exited, "open files"),
            };
            (
                CommandStatus::Failed,
                exit_code.or(signal.map(|s| 128 + s)),
                Some(format!("stopped at its {what} limit")),
                reason,
                *signal,
            )
        }
        Outcome::FailedToStart(e) => (
            CommandStatus::Failed,
            None,
            Some(e.clone()),
            R::FailedToStart,
            None,
        ),
        Outcome::SandboxUnavailable(e) => (
            CommandStatus::Failed,
            None,
            Some(format!(
                "the local sandbox is unavailable on this worker: {e}"
            )),
            R::SandboxUnavailable,
            None,
        ),
        Outcome::ExecutorLost(e) => (
            CommandStatus::Failed,
            None,
            Some(e.clone()),
            R::ExecutorLost,
            None,
        ),
        Outcome::Idle(after) => (
            CommandStatus::TimedOut,
            None,
            Some(format!(
                "idle for {}s: no input, no output and no attached client",
                after.as_secs()
            )),
            R::Idle,
            None,
        ),
    };
    Finish {
        status,
        exit_code,
        error,
        reason,
        signal,
        output_bytes: out.output_bytes,
        truncated: out.truncated,
    }
}

/// A lifecycle event stored in the outbox, waiting to be published.
struct StoredEvent {
    outbox_id: i64,
    message: OutboxMessage,
}

/// What a claim attempt found.
enum Claim {
    /// Claimed now (with its `command.started` event), or resumed (the
    /// event was stored by the earlier attempt's commit).
    Claimed(Box<Claimed>, Option<StoredEvent>),
    NotQueued,
    AtLimit,
}

async fn claim(w: &Worker, id: Uuid, token: Uuid) -> Result<Claim, DbError> {
    let mut client = w.pool.get().await?;
    let tx = client.transaction().await?;
    let claimed = match commands::claim(&tx, id, &w.worker_id, token).await? {
        ClaimOutcome::Claimed(c) => c,
        ClaimOutcome::Resumed(c) => {
            tracing::warn!("the claim had committed but its answer was lost; running the command");
            return Ok(Claim::Claimed(c, None));
        }
        ClaimOutcome::NotQueued => return Ok(Claim::NotQueued),
        ClaimOutcome::AtLimit => return Ok(Claim::AtLimit),
    };
    let event_type = "command.started";
    let mut message = w.topology.event_message(
        event_type,
        &domain::command_event(event_type, &claimed.command),
    );
    telemetry::inject_current(&mut message.headers);
    let outbox_id = outbox::insert(&tx, &message).await?;
    tx.commit().await?;
    Ok(Claim::Claimed(
        claimed,
        Some(StoredEvent { outbox_id, message }),
    ))
}

/// The project runs as many commands as it may: park the message in the
/// delay queue (it comes back after a second, holding no worker slot) and
/// acknowledge this delivery. The command stays `queued`.
async fn defer(w: &Worker, id: Uuid, priority: u8) -> Disposition {
    let message = w.topology.delayed_run_message(id, priority);
    match w.publisher.publish_confirmed(&message).await {
        Ok(()) => {
            tracing::debug!("project at its concurrency limit; command deferred");
            Disposition::Ack
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot defer the command; giving the message back");
            // Not straight back: avoid a hot loop while the broker struggles.
            tokio::time::sleep(Duration::from_millis(500)).await;
            Disposition::Requeue
        }
    }
}

async fn record_finish(w: &Worker, id: Uuid, f: &Finish) -> Result<Option<StoredEvent>, DbError> {
    let mut client = w.pool.get().await?;
    let tx = client.transaction().await?;
    let Some(command) = commands::finish(&tx, id, &w.worker_id, f).await? else {
        return Ok(None);
    };
    let event_type = command.status.event_type().unwrap_or("command.failed");
    let mut message = w
        .topology
        .event_message(event_type, &domain::command_event(event_type, &command));
    telemetry::inject_current(&mut message.headers);
    let outbox_id = outbox::insert(&tx, &message).await?;
    tx.commit().await?;
    Ok(Some(StoredEvent { outbox_id, message }))
}

/// Publishes an event stored in the outbox and marks it published; on any
/// failure it stays in the outbox and the dispatcher's relay publishes it.
async fn announce(w: &Worker, event: StoredEvent) {
    match w.publisher.publish_confirmed(&event.message).await {
        Ok(()) => w.marker.mark(event.outbox_id),
        Err(e) => tracing::warn!(error = %e, "event left in the outbox for the relay"),
    }
}

async fn publish_live(w: &Worker, id: Uuid, event: &OutputEvent) {
    if let Err(e) = w.publisher.publish_output(id, event).await {
        tracing::debug!(error = %e, "cannot publish on the output exchange");
    }
}

/// Retries a database operation with exponential backoff for up to
/// [`DB_RETRY_FOR`].
async fn retry_db<T, F, Fut>(what: &str, mut op: F) -> Result<T, DbError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, DbError>>,
{
    let deadline = Instant::now() + DB_RETRY_FOR;
    let mut delay = Duration::from_millis(250);
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() + delay < deadline => {
                tracing::warn!(error = %e, retry_in = ?delay, "database write ({what}) failed");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Longest a heartbeat may take (a hung connection must not stall it for
/// good; the pool's statement timeout bounds the server's side).
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(10);

/// Refreshes the heartbeat of this worker's running commands every period
/// until `done` fires, so the reaper leaves them alone. A command that is no
/// longer this worker's (the reaper failed it as `worker_lost` while this
/// worker was cut off from PostgreSQL, or its clock ran ahead) is stopped:
/// its status is final and nobody counts its slot.
pub async fn heartbeat(worker: Arc<Worker>, done: CancellationToken) {
    let mut tick = tokio::time::interval(worker.cfg.heartbeat());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = done.cancelled() => return,
        }
        let ids = worker.running_ids();
        if ids.is_empty() {
            continue;
        }
        let beat = async {
            let client = worker.pool.get().await?;
            commands::heartbeat(&client, &worker.worker_id, &ids).await
        };
        let result = match tokio::time::timeout(HEARTBEAT_TIMEOUT, beat).await {
            Ok(r) => r,
            Err(_) => {
                tracing::warn!(running = ids.len(), "heartbeat timed out");
                continue;
            }
        };
        match result {
            Ok(beat) => {
                // Cancels whose broadcast this worker missed.
                for id in beat.cancel {
                    worker.cancel(id);
                }
                for id in beat.lost {
                    worker.disown(id);
                }
            }
            Err(e) => tracing::warn!(error = %e, running = ids.len(), "heartbeat failed"),
        }
    }
}

/// Follows the control exchange until `done` fires, acting on cancel
/// requests for commands this worker runs; reconnects with backoff.
pub async fn control(worker: Arc<Worker>, done: CancellationToken) {
    let mut backoff = RECONNECT_MIN;
    let name = format!("rdev-worker {} control", worker.worker_id);
    while !done.is_cancelled() {
        let opened = tokio::select! {
            r = mq::subscribe_control(&worker.cfg.amqp, &name) => r,
            () = done.cancelled() => return,
        };
        match opened {
            Ok((conn, mut consumer)) => {
                backoff = RECONNECT_MIN;
                loop {
                    let next = tokio::select! {
                        n = consumer.next() => n,
                        () = done.cancelled() => break,
                    };
                    match next {
                        Some(Ok(d)) => match serde_json::from_slice::<ControlMessage>(&d.data) {
                            Ok(ControlMessage::Cancel { command_id }) => {
                                worker.cancel(command_id);
                            }
                            Ok(_) => {}
                            Err(e) => tracing::debug!(error = %e, "malformed control message"),
                        },
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "control consumer failed; reconnecting");
                            break;
                        }
                        None => break,
                    }
                }
                let _ = conn.close(200, "bye".into()).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "cannot follow the control exchange")
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = done.cancelled() => return,
        }
        backoff = (backoff * 2).min(RECONNECT_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out() -> OutputSummary {
        OutputSummary {
            output_bytes: 5,
            truncated: false,
        }
    }

    #[test]
    fn outcomes_map_to_statuses() {
        let f = finish_of(&Outcome::Exited(0), out(), 60, false);
        assert_eq!(
            (f.status, f.exit_code, f.error),
            (CommandStatus::Succeeded, Some(0), None)
        );
        let f = finish_of(&Outcome::Exited(3), out(), 60, false);
        assert_eq!(
            (f.status, f.exit_code, f.error),
            (CommandStatus::Failed, Some(3), None)
        );
        let f = finish_of(&Outcome::Signaled(9), out(), 60, false);
        assert_eq!(f.exit_code, Some(137));
        assert_eq!(f.error.as_deref(), Some("terminated by signal 9"));
        let f = finish_of(&Outcome::TimedOut, out(), 7, false);
        assert_eq!(
            (f.status, f.error.as_deref()),
            (CommandStatus::TimedOut, Some("timed out after 7s"))
        );
        let f = finish_of(&Outcome::Cancelled, out(), 7, false);
        assert_eq!(f.status, CommandStatus::Cancelled);
        let f = finish_of(&Outcome::Cancelled, out(), 7, true);
        assert_eq!(
            (f.status, f.error.as_deref()),
            (CommandStatus::Failed, Some(SHUTDOWN_ERROR))
        );
        let f = finish_of(&Outcome::FailedToStart("nope".into()), out(), 7, false);
        assert_eq!(
            (f.status, f.exit_code, f.error.as_deref(), f.reason),
            (
                CommandStatus::Failed,
                None,
                Some("nope"),
                EndReason::FailedToStart
            )
        );
        assert_eq!(f.output_bytes, 5);
        let f = finish_of(&Outcome::Signaled(9), out(), 7, false);
        assert_eq!((f.reason, f.signal), (EndReason::Signaled, Some(9)));
        let f = finish_of(&Outcome::Cancelled, out(), 7, true);
        assert_eq!(f.reason, EndReason::WorkerShutdown);
        let f = finish_of(
            &Outcome::Limit {
                limit: Limit::Memory,
                exit_code: None,
                signal: Some(9),
            },
            out(),
            7,
            false,
        );
        assert_eq!(
            (
                f.status,
                f.reason,
                f.exit_code,
                f.signal,
                f.error.as_deref()
            ),
            (
                CommandStatus::Failed,
                EndReason::MemoryLimit,
                Some(137),
                Some(9),
                Some("stopped at its memory limit")
            )
        );
        let f = finish_of(
            &Outcome::SandboxUnavailable("no bwrap".into()),
            out(),
            7,
            false,
        );
        assert_eq!(f.reason, EndReason::SandboxUnavailable);
    }
}

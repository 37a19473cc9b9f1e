//! One command: claim it, run it, record how it ended, then tell the broker
//! what to do with its message.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use rdev_shared::db::commands::{self, ClaimOutcome, Claimed, Finish};
use rdev_shared::db::{DbError, webhooks};
use rdev_shared::domain;
use rdev_shared::interactive::StdinMode;
use rdev_shared::mq::{self, OutputEvent, RunMessage};
use rdev_shared::telemetry;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use super::finish::finish_of;
use super::{DB_RETRY_FOR, RunningGuard, Worker};
use crate::executor::{Executor, Job, OUTPUT_CHANNEL_CAPACITY, Outcome};
use crate::interactive::{Activity, INPUT_CHANNEL_CAPACITY, IdleLimit};
use crate::output::{OutputSink, OutputSummary};

/// What to tell the broker about a message once its command is handled.
#[derive(Debug, PartialEq, Eq)]
enum Disposition {
    Ack,
    /// The database could not record the outcome: give the message back.
    /// Whoever gets it finds the command not queued and acks it; the reaper
    /// fails the command once its heartbeat stops.
    Requeue,
}

pub(super) async fn handle(worker: Arc<Worker>, delivery: Delivery, _permit: OwnedSemaphorePermit) {
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
                .unwrap_or(mq::DEFAULT_PRIORITY);
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
        Ok(Claim::Claimed(c)) => *c,
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
    let (_running, cancel) = RunningGuard::new(w, id);
    let began = Instant::now();
    tracing::info!(attempt = claimed.command.attempt, "command started");
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
        Ok(true) => {
            publish_live(w, id, &OutputEvent::End).await;
            Disposition::Ack
        }
        Ok(false) => {
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
    let secrets = match secrets_of(w, &claimed).await {
        Ok(s) => s,
        Err(refused) => {
            let no_output = OutputSummary {
                output_bytes: 0,
                truncated: false,
            };
            return (refused, no_output);
        }
    };
    let id = claimed.command.id;
    let interactive = claimed.command.stdin == StdinMode::Pipe || claimed.command.tty.is_some();
    let sink = OutputSink::new(
        id,
        w.worker_id.clone(),
        claimed.max_output_bytes,
        w.pool.clone(),
        w.publisher.clone(),
    )
    .with_redaction(secrets.redaction);
    let job = job_of(claimed, secrets.job);
    let (tx, rx) = mpsc::channel(OUTPUT_CHANNEL_CAPACITY);
    if !interactive {
        return tokio::join!(w.executors.run(job, tx, None, cancel), sink.consume(rx));
    }
    // Interactive: a pump feeds input in order; output and input both count
    // as activity for the idle limit.
    let activity = Activity::new();
    let (registration, notices) = w.inputs.register(id);
    let (input_tx, input_rx) = mpsc::channel(INPUT_CHANNEL_CAPACITY);
    let idle = IdleLimit {
        after: w.cfg.interactive_idle,
        stop: cancel.clone(),
        fired: Arc::new(AtomicBool::new(false)),
    };
    let pump = tokio::spawn(crate::interactive::pump(
        w.pool.clone(),
        id,
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

/// The command's secrets, read now, not at enqueue: a rotation applies to
/// every command that starts after it. A command that cannot have its
/// secrets never runs (the outcome says why).
async fn secrets_of(
    w: &Worker,
    claimed: &Claimed,
) -> Result<crate::secrets::CommandSecrets, Outcome> {
    match retry_db("secrets", || {
        crate::secrets::resolve(&w.pool, &w.worker_id, &claimed.command, &claimed.secrets)
    })
    .await
    {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(refused)) => Err(Outcome::FailedToStart(refused.0)),
        Err(e) => {
            tracing::error!(error = %e, "cannot read the command's secrets");
            Err(Outcome::FailedToStart(
                "cannot read the command's secrets".into(),
            ))
        }
    }
}

/// What the executor runs for a claimed command.
fn job_of(claimed: Claimed, secrets: crate::secrets::JobSecrets) -> Job {
    let command = claimed.command;
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
    Job {
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
        secrets,
    }
}

/// What a claim attempt found.
enum Claim {
    /// Claimed now (its `command.started` deliveries, for the endpoints
    /// that want it, committed with it), or resumed (the earlier attempt's
    /// commit wrote them).
    Claimed(Box<Claimed>),
    NotQueued,
    AtLimit,
}

async fn claim(w: &Worker, id: Uuid, token: Uuid) -> Result<Claim, DbError> {
    let event_type = super::batch::STARTED;
    // Usually a project without a limit: claimed (with its deliveries, if
    // an endpoint wants them) together with the claims of other commands
    // waiting.
    if let Some(c) = w.batches.claim(id, token).await? {
        return Ok(Claim::Claimed(Box::new(c)));
    }
    let mut client = w.pool.get().await?;
    let tx = client.transaction().await?;
    let claimed = match commands::claim(&tx, id, &w.worker_id, token).await? {
        ClaimOutcome::Claimed(c) => c,
        ClaimOutcome::Resumed(c) => {
            tracing::warn!("the claim had committed but its answer was lost; running the command");
            return Ok(Claim::Claimed(c));
        }
        ClaimOutcome::NotQueued => return Ok(Claim::NotQueued),
        ClaimOutcome::AtLimit => return Ok(Claim::AtLimit),
    };
    let mut message = w.topology.event_message(
        event_type,
        &domain::command_event(event_type, &claimed.command),
    );
    telemetry::inject_current(&mut message.headers);
    let deliveries = webhooks::write_event(&tx, &message, claimed.command.project_id).await?;
    tx.commit().await?;
    if deliveries > 0 {
        w.due.wake();
    }
    Ok(Claim::Claimed(claimed))
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

/// Records a finish and, in its commit, the deliveries of its event
/// (written with the finishes of other commands waiting); `false` when the
/// command was finished elsewhere.
async fn record_finish(w: &Worker, id: Uuid, f: &Finish) -> Result<bool, DbError> {
    let event_type = f.status.event_type().unwrap_or("command.failed");
    w.batches.finish(id, f, event_type).await
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

//! Claims and finishes of concurrent commands written together.
//!
//! A command's claim and its finish are each one statement committed alone
//! when nothing has to commit with them (`commands::claim_alone`,
//! `finish_alone`). Under load a worker's slots claim and finish at the
//! same moments, so each of those statements waits for its own commit (a
//! WAL flush) and costs PostgreSQL a transaction. Here a command hands its
//! claim or its finish to a writer that takes every one waiting (up to
//! [`MAX_BATCH`]) and writes them in one statement, `claim_many_alone` or
//! `finish_many_alone`: the same conditions per row, one commit for all.
//!
//! Nothing waits for company: with nothing else waiting and a slot free,
//! a command writes its batch of one itself, in its own task (the hops to
//! the writer's task, the batch's and back cost a lone command 0.1–0.2 ms
//! on a 2-core machine: docs/BENCHMARKS.md). At most
//! [`IN_FLIGHT`] batches of each kind are written at once; what arrives
//! meanwhile makes up the next batch, so the commits per command fall as
//! the load rises.
//!
//! Each command still gets its own answer, and the rows are those one
//! statement per command would write, so every guarantee of the single
//! statements holds. The claims and finishes that statement did not make
//! because an endpoint wants their event are written by the same writer in
//! one transaction: the updates in one statement (`claim_many`,
//! `finish_many`: the same conditions but that one), every event's
//! deliveries in one insert (`webhooks::write_events`), one commit, and a
//! wake-up for the dispatchers after it. A claim still not made is
//! answered "not this way" and its command takes the transaction path (a
//! project limit, a claim that is not queued); a finish still not made was
//! finished elsewhere. What committed is answered as committed even when a
//! later step fails. The rest of a batch that fails (a lost connection, a
//! deadlock with another worker's batch) is written again one command at a
//! time, so an error is only ever its own command's, and its retry
//! (`retry_db`) is as before.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;

use rdev_shared::db::commands::{self, Claimed, Finish};
use rdev_shared::db::notify::Notifier;
use rdev_shared::db::{DbError, Pool, webhooks};
use rdev_shared::domain;
use rdev_shared::metrics::Metrics;
use rdev_shared::mq::Topology;
use tokio::sync::{Semaphore, mpsc, oneshot};
use uuid::Uuid;

/// Most claims or finishes written in one statement.
pub const MAX_BATCH: usize = commands::MAX_MANY;
/// Most batches of one kind being written at once (each holds a pooled
/// connection).
pub const IN_FLIGHT: usize = 2;
/// Claims or finishes waiting for the writer, at most (past it, a command
/// waits to hand its own over).
const QUEUE: usize = 1024;

/// The event a claim makes.
pub const STARTED: &str = "command.started";

struct ClaimJob {
    id: Uuid,
    token: Uuid,
    /// The trace context of the command's span, for its event.
    trace: BTreeMap<String, String>,
    answer: oneshot::Sender<Result<Option<Claimed>, DbError>>,
}

struct FinishJob {
    id: Uuid,
    finish: Finish,
    event: &'static str,
    /// The trace context of the command's span, for its event.
    trace: BTreeMap<String, String>,
    answer: oneshot::Sender<Result<bool, DbError>>,
}

/// What the writers need: the pool, names, and who to wake.
#[derive(Clone)]
struct Writing {
    pool: Pool,
    worker_id: Arc<str>,
    topology: Topology,
    due: Notifier,
}

/// The writers of one worker. Their tasks end when this is dropped.
pub(super) struct Batches {
    writing: Writing,
    claims: Writer<ClaimJob>,
    finishes: Writer<FinishJob>,
}

impl Batches {
    /// Starts the two writers. Call inside the runtime. `due` is woken
    /// after a commit that wrote webhook deliveries.
    pub fn start(
        pool: Pool,
        worker_id: &str,
        metrics: Arc<Metrics>,
        topology: Topology,
        due: Notifier,
    ) -> Self {
        let worker_id: Arc<str> = worker_id.into();
        let writing = Writing {
            pool: pool.clone(),
            worker_id: worker_id.clone(),
            topology,
            due,
        };
        let claims = {
            let writing = writing.clone();
            writer("claim", metrics.clone(), move |jobs| {
                claim_batch(writing.clone(), jobs)
            })
        };
        let finishes = {
            let writing = writing.clone();
            writer("finish", metrics, move |jobs| {
                finish_batch(writing.clone(), jobs)
            })
        };
        Self {
            writing,
            claims,
            finishes,
        }
    }

    /// Claims a queued command of a project without `max_concurrency`,
    /// and in the same commit writes its `command.started` deliveries,
    /// with the claims of other commands that are waiting. `None` when it
    /// was not claimed this way (not queued, or a limited project): then
    /// claim it with [`commands::claim`] in a transaction. Call it in the
    /// command's span: its trace context goes with the event.
    pub async fn claim(&self, id: Uuid, token: Uuid) -> Result<Option<Claimed>, DbError> {
        let mut trace = BTreeMap::new();
        rdev_shared::telemetry::inject_current(&mut trace);
        let job = |answer| ClaimJob {
            id,
            token,
            trace: trace.clone(),
            answer,
        };
        let (answer, answered) = oneshot::channel();
        if self.claims.submit(job(answer)).await
            && let Ok(result) = answered.await
        {
            return result;
        }
        // The writer is gone (only while the worker is dropped): alone.
        claim_one(&self.writing, &job(oneshot::channel().0)).await
    }

    /// Records a command's finish, and in the same commit its event's
    /// deliveries (`event`, the event type of its status), written with
    /// the finishes of other commands that are waiting. `true` when it
    /// finished the command; `false` when the command was finished
    /// elsewhere (reaped or cancelled). Call it in the command's span: its
    /// trace context goes with the event.
    pub async fn finish(
        &self,
        id: Uuid,
        finish: &Finish,
        event: &'static str,
    ) -> Result<bool, DbError> {
        let mut trace = BTreeMap::new();
        rdev_shared::telemetry::inject_current(&mut trace);
        let job = |answer| FinishJob {
            id,
            finish: finish.clone(),
            event,
            trace: trace.clone(),
            answer,
        };
        let (answer, answered) = oneshot::channel();
        if self.finishes.submit(job(answer)).await
            && let Ok(result) = answered.await
        {
            return result;
        }
        // The writer is gone (only while the worker is dropped): alone.
        finish_one(&self.writing, &job(oneshot::channel().0)).await
    }
}

/// Writes a batch of jobs of one kind (`claim_batch`, `finish_batch`).
type Write<J> = Arc<dyn Fn(Vec<J>) -> futures::future::BoxFuture<'static, ()> + Send + Sync>;

/// Where the jobs of one kind go: a writer task that batches them, or the
/// caller itself when nothing waits (see [`Writer::submit`]).
struct Writer<J> {
    tx: mpsc::Sender<J>,
    slots: Arc<Semaphore>,
    write: Write<J>,
    kind: &'static str,
    metrics: Arc<Metrics>,
}

impl<J: Send + 'static> Writer<J> {
    /// Writes `job`: in the caller's task, as a batch of one, when no job
    /// waits for the writer and one of the [`IN_FLIGHT`] slots is free
    /// (what the writer would do with it, without the hops to its tasks);
    /// else hands it to the writer. `false` when the writer is gone.
    async fn submit(&self, job: J) -> bool {
        if self.tx.capacity() == self.tx.max_capacity()
            && let Ok(slot) = self.slots.clone().try_acquire_owned()
        {
            count(&self.metrics, self.kind, 1);
            (self.write)(vec![job]).await;
            drop(slot);
            return true;
        }
        self.tx.send(job).await.is_ok()
    }
}

fn count(metrics: &Metrics, kind: &str, jobs: usize) {
    metrics.db_batches_total.with_label_values(&[kind]).inc();
    metrics
        .db_batched_commands_total
        .with_label_values(&[kind])
        .inc_by(jobs as u64);
}

/// Starts a writer: takes every job waiting (at least one, at most
/// [`MAX_BATCH`]) once one of [`IN_FLIGHT`] slots is free, and writes them
/// with `write` in a task of their own, counted under `kind`.
fn writer<J, W, F>(kind: &'static str, metrics: Arc<Metrics>, write: W) -> Writer<J>
where
    J: Send + 'static,
    W: Fn(Vec<J>) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let (tx, mut rx) = mpsc::channel::<J>(QUEUE);
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let write: Write<J> = Arc::new(move |jobs| Box::pin(write(jobs)));
    let handle = Writer {
        tx,
        slots: slots.clone(),
        write: write.clone(),
        kind,
        metrics: metrics.clone(),
    };
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            // Wait for a slot before taking the rest: what arrives while
            // every slot is busy joins this batch.
            let Ok(slot) = slots.clone().acquire_owned().await else {
                break;
            };
            let mut jobs = vec![first];
            while jobs.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            count(&metrics, kind, jobs.len());
            let batch = write(jobs);
            tokio::spawn(async move {
                batch.await;
                drop(slot);
            });
        }
    });
    handle
}

async fn claim_batch(w: Writing, jobs: Vec<ClaimJob>) {
    // Tokens are unique per claim; a command named twice is claimed under
    // one of them.
    let mut claimed = HashMap::new();
    let written = claim_all(&w, &jobs, &mut claimed).await;
    // What committed is answered as such whatever failed after it.
    let (done, left): (Vec<ClaimJob>, Vec<ClaimJob>) = jobs
        .into_iter()
        .partition(|j| claimed.contains_key(&j.token));
    for job in done {
        let _ = job.answer.send(Ok(claimed.remove(&job.token)));
    }
    match written {
        Ok(()) => {
            for job in left {
                let _ = job.answer.send(Ok(None));
            }
        }
        Err(e) if left.len() == 1 => {
            let job = left.into_iter().next().expect("one job");
            let _ = job.answer.send(Err(e));
        }
        Err(e) => {
            tracing::warn!(error = %e, claims = left.len(), "a batch of claims failed; writing them one at a time");
            for job in left {
                let one = claim_one(&w, &job).await;
                let _ = job.answer.send(one);
            }
        }
    }
}

/// Claims `jobs`, adding those it claimed to `claimed` (by token) as each
/// commit succeeds: one statement for the claims no endpoint wants an
/// event of, then one transaction for the rest with their
/// `command.started` deliveries.
async fn claim_all(
    w: &Writing,
    jobs: &[ClaimJob],
    claimed: &mut HashMap<Uuid, Claimed>,
) -> Result<(), DbError> {
    let pairs: Vec<(Uuid, Uuid)> = jobs.iter().map(|j| (j.id, j.token)).collect();
    let mut client = w.pool.get().await?;
    claimed.extend(commands::claim_many_alone(&client, &w.worker_id, &pairs, STARTED).await?);
    let rest: Vec<&ClaimJob> = jobs
        .iter()
        .filter(|j| !claimed.contains_key(&j.token))
        .collect();
    if rest.is_empty() {
        return Ok(());
    }
    let tx = client.transaction().await?;
    let pairs: Vec<(Uuid, Uuid)> = rest.iter().map(|j| (j.id, j.token)).collect();
    let done = commands::claim_many(&tx, &w.worker_id, &pairs).await?;
    let messages: Vec<_> = done
        .iter()
        .filter_map(|(token, c)| {
            let job = rest.iter().find(|j| j.token == *token)?;
            Some(w.event(STARTED, &c.command, &job.trace))
        })
        .collect();
    let deliveries = webhooks::write_events(&tx, &messages).await?;
    tx.commit().await?;
    claimed.extend(done);
    if deliveries > 0 {
        w.due.wake();
    }
    Ok(())
}

/// [`claim_all`] for one command.
async fn claim_one(w: &Writing, job: &ClaimJob) -> Result<Option<Claimed>, DbError> {
    let mut claimed = HashMap::new();
    claim_all(w, std::slice::from_ref(job), &mut claimed).await?;
    Ok(claimed.remove(&job.token))
}

impl Writing {
    /// The lifecycle event `event` about `command`, in the trace `trace`,
    /// with the project it is about.
    fn event(
        &self,
        event: &str,
        command: &domain::Command,
        trace: &BTreeMap<String, String>,
    ) -> (rdev_shared::mq::OutgoingMessage, Uuid) {
        let mut message = self
            .topology
            .event_message(event, &domain::command_event(event, command));
        message.headers.extend(trace.clone());
        (message, command.project_id)
    }
}

async fn finish_batch(f: Writing, jobs: Vec<FinishJob>) {
    let mut finished = HashSet::new();
    let written = finish_all(&f, &jobs, &mut finished).await;
    // What committed is answered as such whatever failed after it.
    let (done, left): (Vec<FinishJob>, Vec<FinishJob>) =
        jobs.into_iter().partition(|j| finished.contains(&j.id));
    for job in done {
        let _ = job.answer.send(Ok(true));
    }
    match written {
        Ok(()) => {
            for job in left {
                let _ = job.answer.send(Ok(false));
            }
        }
        Err(e) if left.len() == 1 => {
            let job = left.into_iter().next().expect("one job");
            let _ = job.answer.send(Err(e));
        }
        Err(e) => {
            tracing::warn!(error = %e, finishes = left.len(), "a batch of finishes failed; writing them one at a time");
            for job in left {
                let one = finish_one(&f, &job).await;
                let _ = job.answer.send(one);
            }
        }
    }
}

/// Finishes `jobs`, adding those it finished to `finished` as each commit
/// succeeds: one statement for the finishes no endpoint wants an event of,
/// then one transaction for the rest with their events' deliveries.
async fn finish_all(
    f: &Writing,
    jobs: &[FinishJob],
    finished: &mut HashSet<Uuid>,
) -> Result<(), DbError> {
    let ends: Vec<(Uuid, &Finish, &str)> =
        jobs.iter().map(|j| (j.id, &j.finish, j.event)).collect();
    let mut client = f.pool.get().await?;
    let alone = commands::finish_many_alone(&client, &f.worker_id, &ends).await?;
    finished.extend(alone.iter().map(|c| c.id));
    let rest: Vec<&FinishJob> = jobs.iter().filter(|j| !finished.contains(&j.id)).collect();
    if rest.is_empty() {
        return Ok(());
    }
    let tx = client.transaction().await?;
    let ends: Vec<(Uuid, &Finish)> = rest.iter().map(|j| (j.id, &j.finish)).collect();
    let done = commands::finish_many(&tx, &f.worker_id, &ends).await?;
    let messages: Vec<_> = done
        .iter()
        .filter_map(|command| {
            let job = rest.iter().find(|j| j.id == command.id)?;
            Some(f.event(job.event, command, &job.trace))
        })
        .collect();
    let deliveries = webhooks::write_events(&tx, &messages).await?;
    tx.commit().await?;
    finished.extend(done.iter().map(|c| c.id));
    if deliveries > 0 {
        f.due.wake();
    }
    Ok(())
}

/// [`finish_all`] for one command: `true` when it finished it.
async fn finish_one(f: &Writing, job: &FinishJob) -> Result<bool, DbError> {
    let mut finished = HashSet::new();
    finish_all(f, std::slice::from_ref(job), &mut finished).await?;
    Ok(finished.contains(&job.id))
}

#[cfg(test)]
mod tests {
    use rdev_shared::test_support::TestEnv;

    use super::*;

    /// Claims asked for at once still share statements: the first ones
    /// are written by their own commands while slots are free, the rest
    /// wait for the writer and go together; every command is claimed.
    #[tokio::test]
    async fn claims_asked_for_together_share_statements() {
        let env = TestEnv::new().await;
        let project = env.insert_project("p").await;
        let ids = env.insert_commands(project, 40, "queued", None).await;
        let metrics = Arc::new(Metrics::new("rdev-worker"));
        let batches = Batches::start(
            env.pool.clone(),
            "w",
            metrics.clone(),
            env.topology.clone(),
            Notifier::spawn(env.pool.clone(), webhooks::DUE_CHANNEL),
        );
        let tokens: Vec<Uuid> = ids.iter().map(|_| Uuid::now_v7()).collect();
        let claimed = futures::future::join_all(
            ids.iter()
                .zip(&tokens)
                .map(|(&id, &token)| batches.claim(id, token)),
        )
        .await;
        for (claim, id) in claimed.into_iter().zip(&ids) {
            let c = claim.expect("claim").expect("claimed");
            assert_eq!(c.command.id, *id);
        }
        let statements = metrics.db_batches_total.with_label_values(&["claim"]).get();
        let commands = metrics
            .db_batched_commands_total
            .with_label_values(&["claim"])
            .get();
        assert_eq!(commands, 40);
        assert!(
            statements < 10,
            "{statements} statements for 40 claims asked for at once"
        );
        let running: i64 = env
            .pool
            .get()
            .await
            .expect("db")
            .query_one(
                "SELECT count(*) FROM commands WHERE status = 'running' AND worker_id = 'w'",
                &[],
            )
            .await
            .expect("count")
            .get(0);
        assert_eq!(running, 40);
    }

    /// Every claim and finish statement written through the worker's
    /// write pool (`WRITE_CONNECTIONS`) is planned once, generically, and
    /// each plan finds its commands by key: planned while `commands` is
    /// nearly empty and never analysed, as on a new installation, no plan
    /// scans the table (a cached generic plan is kept as the table grows).
    #[tokio::test]
    async fn the_write_pool_plans_claims_and_finishes_once_as_key_lookups() {
        let env = TestEnv::new().await;
        let project = env.insert_project("p").await;
        let writes = rdev_shared::db::key_lookup_pool(&env.db, 1).expect("pool");
        let mut client = writes.get().await.expect("db");
        let finish = Finish {
            status: domain::CommandStatus::Succeeded,
            exit_code: Some(0),
            error: None,
            reason: domain::EndReason::Exited,
            signal: None,
            output_bytes: 0,
            truncated: false,
        };
        for n in 1..=MAX_BATCH {
            let ids = env.insert_commands(project, n, "queued", None).await;
            let pairs: Vec<(Uuid, Uuid)> = ids.iter().map(|&id| (id, Uuid::now_v7())).collect();
            let claimed = commands::claim_many_alone(&client, "w", &pairs, STARTED)
                .await
                .expect("claim");
            assert_eq!(claimed.len(), n);
            let ends: Vec<(Uuid, &Finish, &str)> = ids
                .iter()
                .map(|&id| (id, &finish, "command.succeeded"))
                .collect();
            let finished = commands::finish_many_alone(&client, "w", &ends)
                .await
                .expect("finish");
            assert_eq!(finished.len(), n);

            let ids = env.insert_commands(project, n, "queued", None).await;
            let pairs: Vec<(Uuid, Uuid)> = ids.iter().map(|&id| (id, Uuid::now_v7())).collect();
            let tx = client.transaction().await.expect("begin");
            assert_eq!(
                commands::claim_many(&tx, "w", &pairs)
                    .await
                    .expect("claim")
                    .len(),
                n
            );
            let ends: Vec<(Uuid, &Finish)> = ids.iter().map(|&id| (id, &finish)).collect();
            assert_eq!(
                commands::finish_many(&tx, "w", &ends)
                    .await
                    .expect("finish")
                    .len(),
                n
            );
            tx.commit().await.expect("commit");
        }
        let statements = client
            .query(
                "SELECT name, parameter_types::text[], generic_plans, custom_plans \
                 FROM pg_prepared_statements WHERE statement LIKE 'WITH u0 AS (UPDATE commands%'",
                &[],
            )
            .await
            .expect("prepared statements");
        // Sixteen sizes of four statements: claim and finish, alone and
        // in a transaction.
        assert_eq!(statements.len(), 4 * MAX_BATCH);
        for row in statements {
            let name: String = row.get(0);
            let types: Vec<String> = row.get(1);
            let (generic, custom): (i64, i64) = (row.get(2), row.get(3));
            assert_eq!(
                (generic, custom),
                (1, 0),
                "{name}: generic and custom plans"
            );
            let nulls: Vec<String> = types.iter().map(|t| format!("NULL::{t}")).collect();
            let plan: String = client
                .query(
                    &format!("EXPLAIN EXECUTE {name}({})", nulls.join(", ")),
                    &[],
                )
                .await
                .expect("explain")
                .iter()
                .map(|r| r.get::<_, String>(0) + "\n")
                .collect();
            assert!(plan.contains("Index Scan"), "{name}: {plan}");
            assert!(!plan.contains("Seq Scan on commands"), "{name}: {plan}");
        }
    }
}

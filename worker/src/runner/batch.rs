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
//! Nothing waits for company: with nothing else waiting, a batch of one
//! is written at once, so a lone command is not slower. At most
//! [`IN_FLIGHT`] batches of each kind are written at once; what arrives
//! meanwhile makes up the next batch, so the commits per command fall as
//! the load rises.
//!
//! Each command still gets its own answer, and the rows are those one
//! statement per command would write, so every guarantee of the single
//! statements holds: a row the batch did not change is answered "not this
//! way" and its command takes the transaction path (an endpoint that wants
//! the event, a project limit, a claim that is not queued). A batch that
//! fails (a lost connection, a deadlock with another worker's batch) is
//! written again one command at a time, so an error is only ever its own
//! command's, and its retry (`retry_db`) is as before.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;

use rdev_shared::db::commands::{self, Claimed, Finish};
use rdev_shared::db::{DbError, Pool};
use rdev_shared::metrics::Metrics;
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
    answer: oneshot::Sender<Result<Option<Claimed>, DbError>>,
}

struct FinishJob {
    id: Uuid,
    finish: Finish,
    event: &'static str,
    answer: oneshot::Sender<Result<bool, DbError>>,
}

/// The writers of one worker. Their tasks end when this is dropped.
pub(super) struct Batches {
    pool: Pool,
    worker_id: Arc<str>,
    claims: mpsc::Sender<ClaimJob>,
    finishes: mpsc::Sender<FinishJob>,
}

impl Batches {
    /// Starts the two writers. Call inside the runtime.
    pub fn start(pool: Pool, worker_id: &str, metrics: Arc<Metrics>) -> Self {
        let worker_id: Arc<str> = worker_id.into();
        let claims = {
            let (pool, worker_id) = (pool.clone(), worker_id.clone());
            writer("claim", metrics.clone(), move |jobs| {
                claim_batch(pool.clone(), worker_id.clone(), jobs)
            })
        };
        let finishes = {
            let (pool, worker_id) = (pool.clone(), worker_id.clone());
            writer("finish", metrics, move |jobs| {
                finish_batch(pool.clone(), worker_id.clone(), jobs)
            })
        };
        Self {
            pool,
            worker_id,
            claims,
            finishes,
        }
    }

    /// [`commands::claim_alone`], written with the claims of other
    /// commands that are waiting.
    pub async fn claim_alone(&self, id: Uuid, token: Uuid) -> Result<Option<Claimed>, DbError> {
        let (answer, answered) = oneshot::channel();
        let job = ClaimJob { id, token, answer };
        if self.claims.send(job).await.is_ok()
            && let Ok(result) = answered.await
        {
            return result;
        }
        // The writer is gone (only while the worker is dropped): alone.
        let client = self.pool.get().await?;
        commands::claim_alone(&client, id, &self.worker_id, token, STARTED).await
    }

    /// [`commands::finish_alone`] (`true` when it finished the command),
    /// written with the finishes of other commands that are waiting.
    pub async fn finish_alone(
        &self,
        id: Uuid,
        finish: &Finish,
        event: &'static str,
    ) -> Result<bool, DbError> {
        let (answer, answered) = oneshot::channel();
        let job = FinishJob {
            id,
            finish: finish.clone(),
            event,
            answer,
        };
        if self.finishes.send(job).await.is_ok()
            && let Ok(result) = answered.await
        {
            return result;
        }
        let client = self.pool.get().await?;
        Ok(
            commands::finish_alone(&client, id, &self.worker_id, finish, event)
                .await?
                .is_some(),
        )
    }
}

/// Starts a writer: takes every job waiting (at least one, at most
/// [`MAX_BATCH`]) once one of [`IN_FLIGHT`] slots is free, and writes them
/// with `write` in a task of their own, counted under `kind`.
fn writer<J, W, F>(kind: &'static str, metrics: Arc<Metrics>, write: W) -> mpsc::Sender<J>
where
    J: Send + 'static,
    W: Fn(Vec<J>) -> F + Send + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let (tx, mut rx) = mpsc::channel::<J>(QUEUE);
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
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
            metrics.db_batches_total.with_label_values(&[kind]).inc();
            metrics
                .db_batched_commands_total
                .with_label_values(&[kind])
                .inc_by(jobs.len() as u64);
            let batch = write(jobs);
            tokio::spawn(async move {
                batch.await;
                drop(slot);
            });
        }
    });
    tx
}

async fn claim_batch(pool: Pool, worker_id: Arc<str>, jobs: Vec<ClaimJob>) {
    let pairs: Vec<(Uuid, Uuid)> = jobs.iter().map(|j| (j.id, j.token)).collect();
    let written = async {
        let client = pool.get().await?;
        commands::claim_many_alone(&client, &worker_id, &pairs, STARTED).await
    }
    .await;
    match written {
        Ok(claimed) => {
            // Tokens are unique per claim; a command named twice was
            // claimed under one of them.
            let mut by_token: HashMap<Uuid, Claimed> = claimed.into_iter().collect();
            for job in jobs {
                let _ = job.answer.send(Ok(by_token.remove(&job.token)));
            }
        }
        Err(e) if jobs.len() == 1 => {
            let job = jobs.into_iter().next().expect("one job");
            let _ = job.answer.send(Err(e));
        }
        Err(e) => {
            tracing::warn!(error = %e, claims = jobs.len(), "a batch of claims failed; writing them one at a time");
            for job in jobs {
                let one = async {
                    let client = pool.get().await?;
                    commands::claim_alone(&client, job.id, &worker_id, job.token, STARTED).await
                }
                .await;
                let _ = job.answer.send(one);
            }
        }
    }
}

async fn finish_batch(pool: Pool, worker_id: Arc<str>, jobs: Vec<FinishJob>) {
    let ends: Vec<(Uuid, &Finish, &str)> =
        jobs.iter().map(|j| (j.id, &j.finish, j.event)).collect();
    let written = async {
        let client = pool.get().await?;
        commands::finish_many_alone(&client, &worker_id, &ends).await
    }
    .await;
    drop(ends);
    match written {
        Ok(finished) => {
            let finished: HashSet<Uuid> = finished.iter().map(|c| c.id).collect();
            for job in jobs {
                let _ = job.answer.send(Ok(finished.contains(&job.id)));
            }
        }
        Err(e) if jobs.len() == 1 => {
            let job = jobs.into_iter().next().expect("one job");
            let _ = job.answer.send(Err(e));
        }
        Err(e) => {
            tracing::warn!(error = %e, finishes = jobs.len(), "a batch of finishes failed; writing them one at a time");
            for job in jobs {
                let one = async {
                    let client = pool.get().await?;
                    let done =
                        commands::finish_alone(&client, job.id, &worker_id, &job.finish, job.event)
                            .await?;
                    Ok(done.is_some())
                }
                .await;
                let _ = job.answer.send(one);
            }
        }
    }
}

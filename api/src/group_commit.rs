//! Group commit of new commands: the rows of concurrent
//! `POST /v1/projects/{name}/commands` requests are written in one
//! transaction, and each request is answered after that commit.
//!
//! A request hands its rows (command, audit entry, outbox message) to the
//! committer and waits for its answer. The committer takes every request
//! that is waiting, up to [`MAX_BATCH`], writes their rows in one
//! transaction (one multi-row insert per table, the three pipelined, then
//! one commit) and answers each. Nothing waits for company: an idle
//! instance writes a batch of one at once. Under load, requests that
//! arrive while batches commit make up the next one, so the commits and
//! statements per request fall as the load rises. At most [`IN_FLIGHT`]
//! batches commit at once (each holds one pooled connection).
//!
//! A batch that fails (a project deleted meanwhile, a lost connection) is
//! written again one request at a time, so a bad row fails only its own
//! request. Requests whose rows need more than the three inserts (an
//! `Idempotency-Key`, whose replay must roll back only its own rows;
//! secrets) are written alone by the handler, as before.
//!
//! A request whose client goes away while it waits is still written once
//! it is in the queue (the relay then publishes it), as a request whose
//! 202 was lost on the way back would be; a client that retries without an
//! `Idempotency-Key` may then have two commands, in either case.

use std::sync::Arc;

use rdev_shared::db::audit::{self, AuditEntry};
use rdev_shared::db::commands::{self, NewCommand};
use rdev_shared::db::{DbError, Pool, outbox};
use rdev_shared::domain::Command;
use rdev_shared::mq::OutgoingMessage;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::http::error::{ApiError, ApiResult};

/// Most requests written in one transaction.
pub const MAX_BATCH: usize = rdev_shared::db::MAX_INSERT;
/// Most batches committing at once.
pub const IN_FLIGHT: usize = 4;
/// Requests waiting for the committer, at most (past it, a request waits
/// to be queued).
const QUEUE: usize = 1024;

/// The rows of one new command.
pub struct NewRows {
    /// The command.
    pub command: NewCommand,
    /// Its `command.create` audit entry; its `actor` is [`NewRows::actor`].
    pub audit: AuditEntry<'static>,
    /// The audit entry's actor (the key's name).
    pub actor: String,
    /// Its run message, stored in the outbox.
    pub message: OutgoingMessage,
}

/// What was written for one request.
pub struct Written {
    /// The command as stored.
    pub command: Command,
    /// Its outbox row.
    pub outbox_id: i64,
    /// Its run message (handed back for the publish after the commit).
    pub message: OutgoingMessage,
}

struct Job {
    rows: NewRows,
    answer: oneshot::Sender<Result<Written, DbError>>,
}

/// The handle requests write through. Cheap to clone; the committer ends
/// when the last handle is dropped, after the batches it holds.
#[derive(Clone)]
pub struct GroupCommit {
    jobs: mpsc::Sender<Job>,
}

impl GroupCommit {
    /// Starts the committer on `pool`.
    pub fn spawn(pool: Pool) -> Self {
        let (commit, committer) = Self::new(pool);
        tokio::spawn(committer);
        commit
    }

    /// The handle and the committer, not started (tests queue requests
    /// first, to make one batch of them).
    pub fn new(pool: Pool) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let (jobs, queue) = mpsc::channel(QUEUE);
        (Self { jobs }, run(pool, queue))
    }

    /// Requests waiting for the committer.
    pub fn queued(&self) -> usize {
        QUEUE - self.jobs.capacity()
    }

    /// Writes `rows` in the next batch; returns once it is committed.
    pub async fn write(&self, rows: NewRows) -> ApiResult<Written> {
        let stopped = || ApiError::Unavailable("this instance is shutting down".into());
        let (answer, answered) = oneshot::channel();
        self.jobs
            .send(Job { rows, answer })
            .await
            .map_err(|_| stopped())?;
        Ok(answered.await.map_err(|_| stopped())??)
    }
}

/// Takes the waiting requests in batches and commits each batch in a task
/// of its own, [`IN_FLIGHT`] at most.
async fn run(pool: Pool, mut queue: mpsc::Receiver<Job>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(first) = queue.recv().await {
        // While every slot is busy, more requests gather for this batch.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let pool = pool.clone();
        tokio::spawn(async move {
            commit(&pool, batch).await;
            drop(slot);
        });
    }
    // Every handle is gone: wait for the batches still committing.
    let _ = slots.acquire_many(IN_FLIGHT as u32).await;
}

/// Commits `batch` and answers each request; after a failed batch, each
/// request alone.
async fn commit(pool: &Pool, batch: Vec<Job>) {
    let rows: Vec<&NewRows> = batch.iter().map(|j| &j.rows).collect();
    match write_all(pool, &rows).await {
        Ok(written) => {
            for (job, (command, outbox_id)) in batch.into_iter().zip(written) {
                answer(job, Ok((command, outbox_id)));
            }
        }
        Err(e) if batch.len() == 1 => {
            if let Some(job) = batch.into_iter().next() {
                answer(job, Err(e));
            }
        }
        Err(e) => {
            tracing::debug!(error = %e, size = batch.len(), "a batch of new commands failed; writing each alone");
            for job in batch {
                let alone = write_all(pool, &[&job.rows]).await;
                answer(job, alone.map(|mut w| w.remove(0)));
            }
        }
    }
}

fn answer(job: Job, written: Result<(Command, i64), DbError>) {
    let Job { rows, answer } = job;
    // A request that went away meanwhile: its command is committed, and
    // the outbox relay publishes it.
    let _ = answer.send(written.map(|(command, outbox_id)| Written {
        command,
        outbox_id,
        message: rows.message,
    }));
}

/// One transaction: the requests' commands, audit entries and outbox
/// messages, each kind in one multi-row insert (the three pipelined), then
/// the commit. The commands and outbox ids, in the order of `rows`.
async fn write_all(pool: &Pool, rows: &[&NewRows]) -> Result<Vec<(Command, i64)>, DbError> {
    let commands: Vec<&NewCommand> = rows.iter().map(|r| &r.command).collect();
    let entries: Vec<AuditEntry<'_>> = rows
        .iter()
        .map(|r| AuditEntry {
            actor: &r.actor,
            ..r.audit.clone()
        })
        .collect();
    let messages: Vec<&OutgoingMessage> = rows.iter().map(|r| &r.message).collect();
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let (inserted, audited, outboxed) = tokio::join!(
        commands::insert_many(&tx, &commands),
        audit::append_many(&tx, &entries),
        outbox::insert_many(&tx, &messages),
    );
    audited?;
    let written = inserted?
        .into_iter()
        .zip(outboxed?)
        .map(|(command, outbox_id)| {
            let command = command.ok_or_else(|| {
                DbError::Corrupt("a batched command insert returned no row".into())
            })?;
            Ok((command, outbox_id))
        })
        .collect::<Result<Vec<_>, DbError>>()?;
    tx.commit().await?;
    Ok(written)
}

//! The delivery loop: claims due deliveries (leased, `SKIP LOCKED`), sends
//! each through its destination's circuit breaker with bounded concurrency,
//! and records the attempt and the delivery's next state in one transaction.
//! On shutdown it stops claiming and lets in-flight attempts finish.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rdev_shared::db::webhooks::{self as repo, AttemptRecord, Claimed, Next};
use rdev_shared::db::{DbError, Pool};
use rdev_shared::lifecycle::CancellationToken;
use rdev_shared::metrics::Metrics;
use rdev_shared::netguard;
use rdev_shared::telemetry;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tracing::Instrument;

use super::Settings;
use super::breakers::Breakers;
use super::schedule::{AfterFailure, after_failure};
use super::sender::{self, Message, Outcome};

/// Reason recorded when a receiver answers 410.
pub const GONE_REASON: &str = "the receiver answered 410 Gone";

/// Shared by every in-flight delivery.
pub struct Delivering {
    /// Database.
    pub pool: Pool,
    /// HTTP client.
    pub client: reqwest::Client,
    /// Breakers by destination.
    pub breakers: Breakers,
    /// Policy.
    pub settings: Settings,
    /// Woken when new deliveries exist.
    pub wake: Arc<Notify>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Where successes of healthy endpoints are written in batches.
    pub successes: SuccessTx,
}

impl Delivering {
    /// How long a claim holds a delivery: the request timeout plus a margin
    /// for recording, so a live dispatcher never loses its claim.
    fn lease(&self) -> Duration {
        self.settings.timeout + Duration::from_secs(30)
    }
}

/// How long a dispatcher with every slot busy waits, once one slot is
/// free, for more to free before it claims again.
const CLAIM_GATHER: Duration = Duration::from_millis(2);

/// Runs until `stop` is cancelled, then waits for in-flight attempts.
pub async fn run(d: Arc<Delivering>, stop: CancellationToken) {
    let permits = Arc::new(Semaphore::new(d.settings.concurrency.max(1)));
    // Slots a saturated loop waits for before it claims again.
    let gather = u32::try_from(d.settings.concurrency / 4)
        .unwrap_or(1)
        .max(1);
    let mut inflight = JoinSet::new();
    loop {
        if stop.is_cancelled() {
            break;
        }
        while inflight.try_join_next().is_some() {}
        let free = permits.available_permits();
        let claimed = if free == 0 {
            Vec::new()
        } else {
            match claim(&d, free).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot claim webhook deliveries");
                    Vec::new()
                }
            }
        };
        // Every slot taken (or just filled): more may be due, so wait for a
        // free slot rather than for the poll interval.
        let saturated = claimed.len() == free;
        for c in claimed {
            // Never fails: the claim asked for at most the free permits.
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                release_now(&d, &c).await;
                continue;
            };
            let span = tracing::info_span!(
                "webhook.deliver",
                delivery_id = %c.id,
                webhook_id = %c.webhook_id,
                event_type = %c.event_type,
                attempt = c.attempts + 1,
                trace_id = tracing::field::Empty,
            );
            let pairs: Vec<(&str, &str)> = c
                .trace_headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            telemetry::continue_trace(&span, &pairs);
            inflight.spawn(deliver(d.clone(), c, permit).instrument(span));
        }
        if saturated {
            tokio::select! {
                () = stop.cancelled() => break,
                p = permits.clone().acquire_owned() => drop(p),
            }
            // Attempts of a backlog end close together: give the others a
            // moment to free their slots too, so that one claim fills
            // several slots instead of one claim (a locking scan of the due
            // index and an update) per slot.
            let _ = tokio::time::timeout(CLAIM_GATHER, permits.acquire_many(gather)).await;
            continue;
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = d.wake.notified() => {}
            () = tokio::time::sleep(d.settings.poll) => {}
        }
    }
    if !inflight.is_empty() {
        tracing::info!(
            inflight = inflight.len(),
            "finishing in-flight webhook deliveries"
        );
    }
    while inflight.join_next().await.is_some() {}
}

async fn claim(d: &Delivering, n: usize) -> Result<Vec<Claimed>, DbError> {
    let client = d.pool.get().await?;
    repo::claim_due(&client, i64::try_from(n).unwrap_or(1), d.lease()).await
}

async fn release_now(d: &Delivering, c: &Claimed) {
    release(d, c, Duration::ZERO).await;
}

async fn release(d: &Delivering, c: &Claimed, after: Duration) {
    let at = Utc::now() + chrono::Duration::from_std(after).unwrap_or(chrono::Duration::zero());
    let result = match d.pool.get().await {
        Ok(client) => repo::release(&client, c.id, c.lease_token, at).await,
        Err(e) => Err(e.into()),
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, delivery = %c.id, "cannot release a delivery; its lease will expire");
    }
}

/// The destination key of a URL: `host:port`.
fn destination(url: &str) -> String {
    match netguard::parse_url(url) {
        Ok(t) => format!("{}:{}", t.host, t.port),
        Err(_) => url.to_owned(),
    }
}

async fn deliver(d: Arc<Delivering>, c: Claimed, _permit: OwnedSemaphorePermit) {
    let dest = destination(&c.url);
    let breaker = d.breakers.get(&dest);
    let acquired = breaker.acquire();
    d.breakers.report(&dest, &breaker);
    if let Err(refused) = acquired {
        d.metrics
            .webhook_deliveries_total
            .with_label_values(&["skipped"])
            .inc();
        // No attempt while the circuit is open: the delivery waits for it.
        tracing::debug!(delivery = %c.id, retry_in = ?refused.retry_in, "circuit open; rescheduling");
        release(&d, &c, refused.retry_in).await;
        return;
    }
    let event_id = c.event_id.to_string();
    let outcome = sender::send(
        &d.client,
        &Message {
            url: &c.url,
            secret: c.secret.expose(),
            previous_secret: c.previous_secret.as_ref().map(|s| s.expose()),
            id: &event_id,
            body: &c.payload,
        },
        d.settings.allow_private,
    )
    .await;
    if outcome.host_failed() {
        breaker.failure();
    } else {
        breaker.success();
    }
    d.breakers.report(&dest, &breaker);
    d.metrics
        .webhook_delivery_duration_seconds
        .observe(outcome.duration.as_secs_f64());
    if let Err(e) = record(&d, &c, &outcome).await {
        // The lease expires and the delivery is tried again: at least once.
        tracing::warn!(error = %e, delivery = %c.id, "cannot record a webhook attempt");
    }
}

async fn record(d: &Delivering, c: &Claimed, o: &Outcome) -> Result<(), String> {
    let gone = o.status == Some(410);
    let next = if o.succeeded() {
        Next::Succeeded
    } else if gone {
        Next::Failed
    } else {
        let made = usize::try_from(c.attempts + 1 - c.retry_base).unwrap_or(usize::MAX);
        match after_failure(
            &d.settings.schedule,
            made,
            c.single_attempt,
            o.retry_after,
            d.settings.retry_after_cap,
        ) {
            AfterFailure::Retry(delay) => Next::RetryAt(
                Utc::now() + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::zero()),
            ),
            AfterFailure::Dead => Next::Dead,
            AfterFailure::Failed => Next::Failed,
        }
    };
    let record = AttemptRecord {
        delivery_id: c.id,
        lease_token: c.lease_token,
        at: o.at,
        status_code: o.status.map(i32::from),
        duration_ms: i32::try_from(o.duration.as_millis()).unwrap_or(i32::MAX),
        error: o.error.clone(),
        response_excerpt: o.excerpt.clone(),
        next,
    };
    // A success to an endpoint that was healthy when claimed writes only
    // the delivery and its attempt, with the other such successes of the
    // moment in one statement (`write_successes`); no lock on the endpoint,
    // which every delivery to it would otherwise wait for, one commit after
    // another. (A failure recorded after this delivery was claimed is not
    // cleared by this success; the next success claimed after it clears
    // it.) Anything else writes the endpoint too.
    let (recorded, disabled) = if o.succeeded() && !c.endpoint_failing {
        let (answer, answered) = oneshot::channel();
        d.successes
            .send((record, answer))
            .await
            .map_err(|_| "the success writer stopped".to_owned())?;
        let recorded = answered
            .await
            .map_err(|_| "the success writer stopped".to_owned())??;
        (recorded, None)
    } else {
        record_alone(d, c, o, &record)
            .await
            .map_err(|e| e.to_string())?
    };
    if !recorded {
        tracing::warn!(delivery = %c.id, "lost the claim before recording; the attempt is not counted");
        return Ok(());
    }
    let label = match next {
        Next::Succeeded => "succeeded",
        Next::Dead => "dead",
        Next::RetryAt(_) | Next::Failed => "failed",
    };
    d.metrics
        .webhook_deliveries_total
        .with_label_values(&[label])
        .inc();
    if let Some(reason) = disabled {
        tracing::warn!(webhook = %c.webhook_id, %reason, "webhook endpoint disabled");
    }
    tracing::debug!(delivery = %c.id, status = ?o.status, next = ?next, "webhook attempt recorded");
    Ok(())
}

/// Records an attempt that writes its endpoint too (a failure, or a
/// success that ends a failure run), in a transaction of its own that
/// locks the endpoint first: endpoint, then delivery, the order in which
/// the API locks them. Returns whether the claim still held, and the
/// reason the endpoint was disabled, if it was.
async fn record_alone(
    d: &Delivering,
    c: &Claimed,
    o: &Outcome,
    record: &AttemptRecord,
) -> Result<(bool, Option<String>), DbError> {
    let mut client = d.pool.get().await?;
    let tx = client.transaction().await?;
    repo::lock_endpoint(&tx, c.webhook_id).await?;
    if !repo::record_attempt(&tx, record).await? {
        return Ok((false, None));
    }
    let mut disabled = None;
    if o.succeeded() {
        repo::mark_healthy(&tx, c.webhook_id).await?;
    } else if o.status == Some(410) {
        if repo::disable(&tx, c.webhook_id, GONE_REASON).await? {
            disabled = Some(GONE_REASON.to_owned());
        }
    } else if let Some(since) = repo::mark_failing(&tx, c.webhook_id, o.at).await?
        && (Utc::now() - since).to_std().unwrap_or_default() >= d.settings.disable_after
    {
        let reason = format!("failing continuously since {}", since.to_rfc3339());
        if repo::disable(&tx, c.webhook_id, &reason).await? {
            disabled = Some(reason);
        }
    }
    tx.commit().await?;
    Ok((true, disabled))
}

/// Most successes one statement writes.
const SUCCESS_BATCH: usize = 64;

/// A success handed to [`write_successes`], and where its answer goes
/// (whether the claim still held).
pub type SuccessTx = mpsc::Sender<(AttemptRecord, oneshot::Sender<Result<bool, String>>)>;

/// Starts the writer of successes; it ends when every sender is dropped.
pub fn spawn_success_writer(pool: Pool) -> SuccessTx {
    // Bounded: at most the delivery concurrency waits here anyway.
    let (tx, rx) = mpsc::channel(SUCCESS_BATCH * 4);
    tokio::spawn(write_successes(pool, rx));
    tx
}

/// Writes successes of healthy endpoints in batches: every delivery task
/// waiting with one goes into the next statement (up to
/// [`SUCCESS_BATCH`]), so under load one commit records many attempts and
/// an idle dispatcher writes a batch of one at once. A batch that fails is
/// written again one success at a time, so a bad row fails only its own.
async fn write_successes(
    pool: Pool,
    mut rx: mpsc::Receiver<(AttemptRecord, oneshot::Sender<Result<bool, String>>)>,
) {
    let mut batch = Vec::with_capacity(SUCCESS_BATCH);
    while rx.recv_many(&mut batch, SUCCESS_BATCH).await > 0 {
        let (records, answers): (Vec<AttemptRecord>, Vec<_>) = batch.drain(..).unzip();
        match write_batch(&pool, &records).await {
            Ok(recorded) => {
                for (r, answer) in records.iter().zip(answers) {
                    let _ = answer.send(Ok(recorded.contains(&r.delivery_id)));
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, successes = records.len(), "a batch of successes failed; writing them one by one");
                for (r, answer) in records.iter().zip(answers) {
                    let one = write_batch(&pool, std::slice::from_ref(r))
                        .await
                        .map(|ids| !ids.is_empty())
                        .map_err(|e| e.to_string());
                    let _ = answer.send(one);
                }
            }
        }
    }
}

async fn write_batch(
    pool: &Pool,
    records: &[AttemptRecord],
) -> Result<std::collections::HashSet<uuid::Uuid>, DbError> {
    let client = pool.get().await?;
    Ok(repo::record_successes(&client, records)
        .await?
        .into_iter()
        .collect())
}

//! `webhook_deliveries` and `webhook_attempts`: the fan-out of events, the
//! queue dispatchers claim from (see the parent module), attempts, and what
//! the API reads and redelivers.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::Row;
use uuid::Uuid;

use super::super::{DbError, from_json, parse_col, to_json};
use super::{PREVIOUS_SECRET_FIELD, SECRET_FIELD, secs};
use crate::config::Secret;
use crate::webhook::{Attempt, Delivery, DeliveryStatus};

/// An event to fan out to the endpoints that want it.
#[derive(Clone, Debug)]
pub struct FanOut<'a> {
    /// Event id (`webhook-id`).
    pub event_id: Uuid,
    /// Event type.
    pub event_type: &'a str,
    /// Exact body to send.
    pub payload: &'a [u8],
    /// The command the event is about (its project filters endpoints).
    pub command_id: Option<Uuid>,
    /// Trace context headers (`traceparent`, `tracestate`) of the event.
    pub trace_headers: &'a BTreeMap<String, String>,
}

/// The channel notified after a transaction that wrote deliveries commits
/// (a [`Notifier`](crate::db::notify::Notifier) of the writer's process);
/// dispatchers listen on it and claim at once.
pub const DUE_CHANNEL: &str = "rdev_webhook_due";

/// Writes a lifecycle event's deliveries in the transaction of the change
/// it reports: one pending delivery, due at once, per enabled endpoint that
/// wants it (subscribed to its type, the message's routing key, or `*`; for
/// `project` or for every project). An endpoint gets the events of the
/// changes that commit after it was created, while it is enabled. Without
/// an endpoint that wants it this is one read and writes nothing. Returns
/// the number of deliveries written: when it is not 0, the caller wakes
/// the dispatchers ([`DUE_CHANNEL`]) once the transaction has committed.
pub async fn write_event(
    client: &impl deadpool_postgres::GenericClient,
    event: &crate::mq::OutgoingMessage,
    project: Uuid,
) -> Result<u64, DbError> {
    write_events(client, &[(event, project)]).await
}

/// [`write_event`] for several events, each about a command of its
/// project, in one insert: the endpoints that want an event are read once
/// per (event type, project). Returns the number of deliveries written.
pub async fn write_events<M: std::borrow::Borrow<crate::mq::OutgoingMessage>>(
    client: &impl deadpool_postgres::GenericClient,
    events: &[(M, Uuid)],
) -> Result<u64, DbError> {
    static WANTED: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "SELECT id FROM webhooks w WHERE {}",
            wants_event("w", "$1", "$2")
        )
    });
    const INSERT: &str = "WITH d AS (INSERT INTO webhook_deliveries \
          (id, webhook_id, event_id, event_type, payload, status, next_attempt_at, trace_headers) \
          SELECT d.id, d.webhook_id, d.event_id, d.event_type, d.payload, 'pending', now(), d.trace \
          FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::bytea[], $6::jsonb[]) \
            AS d(id, webhook_id, event_id, event_type, payload, trace) \
          ON CONFLICT (webhook_id, event_id) DO NOTHING RETURNING 1) \
        SELECT count(*) FROM d";
    let mut wanted: HashMap<(&str, Uuid), Vec<Uuid>> = HashMap::new();
    let mut ids = Vec::new();
    let mut endpoints = Vec::new();
    let mut event_ids = Vec::new();
    let mut types: Vec<&str> = Vec::new();
    let mut payloads: Vec<&[u8]> = Vec::new();
    let mut traces = Vec::new();
    for (event, project) in events {
        let event: &crate::mq::OutgoingMessage = event.borrow();
        let key = (event.routing_key.as_str(), *project);
        if let std::collections::hash_map::Entry::Vacant(slot) = wanted.entry(key) {
            let rows = client
                .query(
                    &super::super::prepared(client, &WANTED).await?,
                    &[&event.routing_key, project],
                )
                .await?;
            let ids: Vec<Uuid> = rows
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?;
            slot.insert(ids);
        }
        let wanting = wanted.get(&key).map(Vec::as_slice).unwrap_or_default();
        if wanting.is_empty() {
            continue;
        }
        let event_id = event_id_of(&event.payload)?;
        let trace: BTreeMap<&str, &str> = event
            .headers
            .iter()
            .filter(|(k, _)| *k == "traceparent" || *k == "tracestate")
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let trace = to_json(&trace);
        for endpoint in wanting {
            ids.push(Uuid::now_v7());
            endpoints.push(*endpoint);
            event_ids.push(event_id);
            types.push(&event.routing_key);
            payloads.push(&event.payload);
            traces.push(trace.clone());
        }
    }
    if ids.is_empty() {
        return Ok(0);
    }
    let row = client
        .query_one(
            &super::super::prepared(client, INSERT).await?,
            &[&ids, &endpoints, &event_ids, &types, &payloads, &traces],
        )
        .await?;
    let written: i64 = row.try_get(0)?;
    Ok(u64::try_from(written).unwrap_or(0))
}

/// The SQL condition on the `webhooks` row `w` of an endpoint that wants
/// an event of type `event` about a command of `project` (SQL expressions):
/// what [`write_event`] writes deliveries for, and what a change that
/// commits alone checks there is none of.
pub fn wants_event(w: &str, event: &str, project: &str) -> String {
    format!(
        "{w}.deleted_at IS NULL AND {w}.enabled \
         AND ({w}.project_id IS NULL OR {w}.project_id = {project}) \
         AND ({event} = ANY({w}.events) OR '*' = ANY({w}.events))"
    )
}

/// The `id` of an event's body (its `webhook-id`).
fn event_id_of(payload: &[u8]) -> Result<Uuid, DbError> {
    #[derive(serde::Deserialize)]
    struct Head {
        id: Uuid,
    }
    serde_json::from_slice::<Head>(payload)
        .map(|h| h.id)
        .map_err(|e| DbError::Corrupt(format!("an event without an id: {e}")))
}

/// Creates one pending delivery, due after `first_delay`, per (event,
/// enabled endpoint subscribed to its type or `*` whose project filter
/// matches); a pair that already has one is skipped, so a redelivered event
/// is harmless. A constant number of statements whatever the batch size.
/// Returns the number created.
pub async fn fan_out(
    client: &impl deadpool_postgres::GenericClient,
    events: &[FanOut<'_>],
    first_delay: Duration,
) -> Result<u64, DbError> {
    if events.is_empty() {
        return Ok(0);
    }
    let endpoints: Vec<(Uuid, Vec<String>, Option<Uuid>)> = client
        .query(
            "SELECT id, events, project_id FROM webhooks WHERE deleted_at IS NULL AND enabled",
            &[],
        )
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
        .collect::<Result<_, DbError>>()?;
    if endpoints.is_empty() {
        return Ok(0);
    }
    let command_ids: Vec<Uuid> = events.iter().filter_map(|e| e.command_id).collect();
    let projects: HashMap<Uuid, Uuid> = if endpoints.iter().any(|e| e.2.is_some()) {
        client
            .query(
                "SELECT id, project_id FROM commands WHERE id = ANY($1)",
                &[&command_ids],
            )
            .await?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_, DbError>>()?
    } else {
        HashMap::new()
    };
    let mut ids = Vec::new();
    let mut webhook_ids = Vec::new();
    let mut event_ids = Vec::new();
    let mut types = Vec::new();
    let mut payloads: Vec<&[u8]> = Vec::new();
    let mut traces = Vec::new();
    for e in events {
        let project = e.command_id.and_then(|c| projects.get(&c).copied());
        for (wid, subscribed, filter) in &endpoints {
            if subscribes(subscribed, *filter, e.event_type, project) {
                ids.push(Uuid::now_v7());
                webhook_ids.push(*wid);
                event_ids.push(e.event_id);
                types.push(e.event_type);
                payloads.push(e.payload);
                traces.push(to_json(e.trace_headers));
            }
        }
    }
    if ids.is_empty() {
        return Ok(0);
    }
    Ok(client
        .execute(
            "INSERT INTO webhook_deliveries (id, webhook_id, event_id, event_type, payload, status, \
             next_attempt_at, trace_headers) \
             SELECT d.id, d.webhook_id, d.event_id, d.event_type, d.payload, 'pending', \
                    now() + make_interval(secs => $6), d.trace \
             FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::bytea[], $7::jsonb[]) \
                  AS d(id, webhook_id, event_id, event_type, payload, trace) \
             ON CONFLICT (webhook_id, event_id) DO NOTHING",
            &[
                &ids,
                &webhook_ids,
                &event_ids,
                &types,
                &payloads,
                &secs(first_delay),
                &traces,
            ],
        )
        .await?)
}

/// Whether an endpoint with these `events` and project filter wants an event
/// of `event_type` about a command of `project`.
pub fn subscribes(
    events: &[String],
    filter: Option<Uuid>,
    event_type: &str,
    project: Option<Uuid>,
) -> bool {
    let type_ok = events
        .iter()
        .any(|e| e == crate::webhook::ALL_EVENTS || e == event_type);
    type_ok && filter.is_none_or(|f| project == Some(f))
}

/// Enqueues one delivery for one endpoint, due now (the test event).
pub async fn insert_delivery(
    client: &impl deadpool_postgres::GenericClient,
    webhook_id: Uuid,
    event_id: Uuid,
    event_type: &str,
    payload: &[u8],
    trace_headers: &BTreeMap<String, String>,
) -> Result<Uuid, DbError> {
    let id = Uuid::now_v7();
    client
        .execute(
            "INSERT INTO webhook_deliveries (id, webhook_id, event_id, event_type, payload, status, \
             trace_headers) VALUES ($1,$2,$3,$4,$5,'pending',$6)",
            &[
                &id,
                &webhook_id,
                &event_id,
                &event_type,
                &payload,
                &to_json(trace_headers),
            ],
        )
        .await?;
    Ok(id)
}

/// A delivery claimed for one attempt.
#[derive(Clone, Debug)]
pub struct Claimed {
    /// Delivery id.
    pub id: Uuid,
    /// The claim; pass it back when recording.
    pub lease_token: Uuid,
    /// Endpoint.
    pub webhook_id: Uuid,
    /// Endpoint URL.
    pub url: String,
    /// Endpoint secret.
    pub secret: Secret,
    /// The secret before the last rotation, while it still signs too.
    pub previous_secret: Option<Secret>,
    /// The endpoint was in a failure run (`failing_since` set) when claimed.
    pub endpoint_failing: bool,
    /// Event id.
    pub event_id: Uuid,
    /// Event type.
    pub event_type: String,
    /// Body.
    pub payload: Vec<u8>,
    /// Attempts made before this one.
    pub attempts: i32,
    /// Schedule index of attempt `attempts` is `attempts - retry_base`.
    pub retry_base: i32,
    /// A failure of this attempt ends the delivery (manual redelivery).
    pub single_attempt: bool,
    /// Trace context of the event.
    pub trace_headers: BTreeMap<String, String>,
}

/// Claims up to `limit` due deliveries of enabled endpoints, oldest due
/// first, skipping rows another dispatcher holds, and leases them for `lease`.
pub async fn claim_due(
    client: &impl deadpool_postgres::GenericClient,
    limit: i64,
    lease: Duration,
) -> Result<Vec<Claimed>, DbError> {
    // Prepared once per connection: a busy dispatcher claims hundreds of
    // times a second.
    const CLAIM: &str = "UPDATE webhook_deliveries d \
         SET next_attempt_at = now() + make_interval(secs => $2), lease_token = $3, \
             updated_at = now() \
         FROM webhooks w \
         WHERE w.id = d.webhook_id AND d.id IN ( \
             SELECT dd.id FROM webhook_deliveries dd \
             JOIN webhooks ww ON ww.id = dd.webhook_id \
             WHERE dd.status = 'pending' AND dd.next_attempt_at <= now() \
               AND ww.enabled AND ww.deleted_at IS NULL \
             ORDER BY dd.next_attempt_at LIMIT $1 \
             FOR UPDATE OF dd SKIP LOCKED) \
         RETURNING d.id, d.webhook_id, w.url, w.secret, \
             CASE WHEN w.previous_secret_expires_at > now() THEN w.previous_secret END \
             AS previous_secret, w.failing_since IS NOT NULL AS endpoint_failing, \
             d.event_id, d.event_type, d.payload, \
             d.attempts, d.retry_base, d.single_attempt, d.trace_headers";
    let token = Uuid::now_v7();
    let rows = client
        .query(
            &super::super::prepared(client, CLAIM).await?,
            &[&limit, &secs(lease), &token],
        )
        .await?;
    let ring = crate::crypto::ring();
    rows.iter()
        .map(|r| {
            Ok(Claimed {
                id: r.try_get("id")?,
                lease_token: token,
                webhook_id: r.try_get("webhook_id")?,
                url: r.try_get("url")?,
                secret: Secret::new(
                    ring.open_str(&r.try_get::<_, String>("secret")?, SECRET_FIELD)?,
                ),
                previous_secret: r
                    .try_get::<_, Option<String>>("previous_secret")?
                    .map(|s| ring.open_str(&s, PREVIOUS_SECRET_FIELD).map(Secret::new))
                    .transpose()?,
                endpoint_failing: r.try_get("endpoint_failing")?,
                event_id: r.try_get("event_id")?,
                event_type: r.try_get("event_type")?,
                payload: r.try_get("payload")?,
                attempts: r.try_get("attempts")?,
                retry_base: r.try_get("retry_base")?,
                single_attempt: r.try_get("single_attempt")?,
                trace_headers: from_json(r.try_get("trace_headers")?, "trace_headers")
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// Gives a claimed delivery back without an attempt (its host's circuit is
/// open, or the dispatcher is stopping), due again at `at`.
pub async fn release(
    client: &impl deadpool_postgres::GenericClient,
    id: Uuid,
    lease_token: Uuid,
    at: DateTime<Utc>,
) -> Result<bool, DbError> {
    let n = client
        .execute(
            "UPDATE webhook_deliveries SET next_attempt_at = $3, lease_token = NULL, \
             updated_at = now() WHERE id = $1 AND lease_token = $2 AND status = 'pending'",
            &[&id, &lease_token, &at],
        )
        .await?;
    Ok(n == 1)
}

/// What an attempt leads to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// 2xx: done.
    Succeeded,
    /// Try again at this time.
    RetryAt(DateTime<Utc>),
    /// The schedule is exhausted.
    Dead,
    /// Stopped early (one-off redelivery failed, or the endpoint is disabled).
    Failed,
}

/// One finished HTTP attempt.
#[derive(Clone, Debug)]
pub struct AttemptRecord {
    /// The delivery.
    pub delivery_id: Uuid,
    /// The claim it was made under.
    pub lease_token: Uuid,
    /// When it started.
    pub at: DateTime<Utc>,
    /// Answer status.
    pub status_code: Option<i32>,
    /// Duration.
    pub duration_ms: i32,
    /// Failure description.
    pub error: Option<String>,
    /// Start of the response body.
    pub response_excerpt: Option<String>,
    /// Resulting state.
    pub next: Next,
}

/// Locks an endpoint's row for the rest of the transaction. A dispatcher
/// recording an attempt takes it before the delivery's row, the order in
/// which the API's update, disable and delete take them (endpoint, then its
/// pending deliveries): the other order deadlocks, and PostgreSQL then
/// aborts one side (an unrecorded attempt, or a 500).
pub async fn lock_endpoint(
    client: &impl deadpool_postgres::GenericClient,
    webhook_id: Uuid,
) -> Result<(), DbError> {
    client
        .execute(
            "SELECT 1 FROM webhooks WHERE id = $1 FOR NO KEY UPDATE",
            &[&webhook_id],
        )
        .await?;
    Ok(())
}

/// Records an attempt and the delivery's new state; call inside a
/// transaction, after [`lock_endpoint`] when the transaction also writes the
/// endpoint. Returns false (and writes nothing) when the claim was lost
/// (the lease ran out and another dispatcher took the delivery).
pub async fn record_attempt(
    client: &impl deadpool_postgres::GenericClient,
    a: &AttemptRecord,
) -> Result<bool, DbError> {
    let (status, next_at) = match a.next {
        Next::Succeeded => (DeliveryStatus::Succeeded, None),
        Next::RetryAt(t) => (DeliveryStatus::Pending, Some(t)),
        Next::Dead => (DeliveryStatus::Dead, None),
        Next::Failed => (DeliveryStatus::Failed, None),
    };
    let n = client
        .execute(
            "UPDATE webhook_deliveries SET status = $3, attempts = attempts + 1, \
             next_attempt_at = COALESCE($4, next_attempt_at), lease_token = NULL, \
             single_attempt = false, last_status_code = $5, last_error = $6, \
             last_duration_ms = $7, updated_at = now() \
             WHERE id = $1 AND lease_token = $2 AND status = 'pending'",
            &[
                &a.delivery_id,
                &a.lease_token,
                &status.as_str(),
                &next_at,
                &a.status_code,
                &a.error,
                &a.duration_ms,
            ],
        )
        .await?;
    if n == 0 {
        return Ok(false);
    }
    client
        .execute(
            "INSERT INTO webhook_attempts (delivery_id, at, status_code, duration_ms, error, \
             response_excerpt) VALUES ($1,$2,$3,$4,$5,$6)",
            &[
                &a.delivery_id,
                &a.at,
                &a.status_code,
                &a.duration_ms,
                &a.error,
                &a.response_excerpt,
            ],
        )
        .await?;
    Ok(true)
}

/// Records many successful attempts (each [`Next::Succeeded`], of an
/// endpoint that needs no write) in one statement: the deliveries become
/// `succeeded` and get their attempt rows. Returns the ids recorded; a
/// delivery whose claim was lost is left out and written nothing for.
pub async fn record_successes(
    client: &impl deadpool_postgres::GenericClient,
    records: &[AttemptRecord],
) -> Result<Vec<Uuid>, DbError> {
    const SQL: &str = "WITH r AS (SELECT * FROM unnest($1::uuid[], $2::uuid[], \
          $3::timestamptz[], $4::int[], $5::int[], $6::text[]) \
          AS r(id, token, at, code, duration, excerpt)), \
        u AS (UPDATE webhook_deliveries d SET status = 'succeeded', attempts = attempts + 1, \
          lease_token = NULL, single_attempt = false, last_status_code = r.code, \
          last_error = NULL, last_duration_ms = r.duration, updated_at = now() \
          FROM r WHERE d.id = r.id AND d.lease_token = r.token AND d.status = 'pending' \
          RETURNING d.id) \
        INSERT INTO webhook_attempts (delivery_id, at, status_code, duration_ms, response_excerpt) \
        SELECT r.id, r.at, r.code, r.duration, r.excerpt FROM r JOIN u ON u.id = r.id \
        RETURNING delivery_id";
    if records.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = records.iter().map(|r| r.delivery_id).collect();
    let tokens: Vec<Uuid> = records.iter().map(|r| r.lease_token).collect();
    let at: Vec<DateTime<Utc>> = records.iter().map(|r| r.at).collect();
    let codes: Vec<Option<i32>> = records.iter().map(|r| r.status_code).collect();
    let durations: Vec<i32> = records.iter().map(|r| r.duration_ms).collect();
    let excerpts: Vec<Option<&str>> = records
        .iter()
        .map(|r| r.response_excerpt.as_deref())
        .collect();
    let rows = client
        .query(
            &super::super::prepared(client, SQL).await?,
            &[&ids, &tokens, &at, &codes, &durations, &excerpts],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?)
}

/// Ends an endpoint's failure run after a success.
pub async fn mark_healthy(
    client: &impl deadpool_postgres::GenericClient,
    webhook_id: Uuid,
) -> Result<(), DbError> {
    client
        .execute(
            "UPDATE webhooks SET failing_since = NULL WHERE id = $1 AND failing_since IS NOT NULL",
            &[&webhook_id],
        )
        .await?;
    Ok(())
}

/// Notes a failed attempt at `at`; returns since when the endpoint has been
/// failing without a success in between.
pub async fn mark_failing(
    client: &impl deadpool_postgres::GenericClient,
    webhook_id: Uuid,
    at: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, DbError> {
    let row = client
        .query_opt(
            "UPDATE webhooks SET failing_since = COALESCE(failing_since, $2) WHERE id = $1 \
             RETURNING failing_since",
            &[&webhook_id, &at],
        )
        .await?;
    Ok(row.map(|r| r.try_get(0)).transpose()?.flatten())
}

const DELIVERY_COLUMNS: &str = "id, webhook_id, event_id, event_type, status, attempts, \
     next_attempt_at, last_status_code, last_error, last_duration_ms, created_at, updated_at";

fn delivery_from_row(row: &Row) -> Result<Delivery, DbError> {
    Ok(Delivery {
        id: row.try_get("id")?,
        webhook_id: row.try_get("webhook_id")?,
        event_id: row.try_get("event_id")?,
        event_type: row.try_get("event_type")?,
        status: parse_col(row.try_get("status")?, "webhook_deliveries.status")?,
        attempt_count: row.try_get("attempts")?,
        next_attempt_at: row.try_get("next_attempt_at")?,
        last_status_code: row.try_get("last_status_code")?,
        last_error: row.try_get("last_error")?,
        last_duration_ms: row.try_get("last_duration_ms")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        attempts: Vec::new(),
    })
}

async fn with_attempts(
    client: &impl deadpool_postgres::GenericClient,
    mut deliveries: Vec<Delivery>,
) -> Result<Vec<Delivery>, DbError> {
    if deliveries.is_empty() {
        return Ok(deliveries);
    }
    let ids: Vec<Uuid> = deliveries.iter().map(|d| d.id).collect();
    let rows = client
        .query(
            "SELECT delivery_id, at, status_code, duration_ms, error, response_excerpt \
             FROM webhook_attempts WHERE delivery_id = ANY($1) ORDER BY id",
            &[&ids],
        )
        .await?;
    for r in &rows {
        let delivery_id: Uuid = r.try_get("delivery_id")?;
        let attempt = Attempt {
            at: r.try_get("at")?,
            status_code: r.try_get("status_code")?,
            duration_ms: r.try_get("duration_ms")?,
            error: r.try_get("error")?,
            response_excerpt: r.try_get("response_excerpt")?,
        };
        if let Some(d) = deliveries.iter_mut().find(|d| d.id == delivery_id) {
            d.attempts.push(attempt);
        }
    }
    Ok(deliveries)
}

/// An endpoint's deliveries, newest first, older than `before`, with their attempts.
pub async fn list_deliveries(
    client: &impl deadpool_postgres::GenericClient,
    webhook_id: Uuid,
    status: Option<DeliveryStatus>,
    before: Option<Uuid>,
    limit: i64,
) -> Result<Vec<Delivery>, DbError> {
    let sql = format!(
        "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE webhook_id = $1 \
         AND ($2::text IS NULL OR status = $2) AND ($3::uuid IS NULL OR id < $3) \
         ORDER BY id DESC LIMIT $4"
    );
    let status = status.map(|s| s.as_str());
    let rows = client
        .query(&sql, &[&webhook_id, &status, &before, &limit])
        .await?;
    let list = rows
        .iter()
        .map(delivery_from_row)
        .collect::<Result<_, _>>()?;
    with_attempts(client, list).await
}

/// One delivery of an endpoint, with its attempts.
pub async fn get_delivery(
    client: &impl deadpool_postgres::GenericClient,
    webhook_id: Uuid,
    id: Uuid,
) -> Result<Option<Delivery>, DbError> {
    let sql = format!(
        "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE webhook_id = $1 AND id = $2"
    );
    let Some(row) = client.query_opt(&sql, &[&webhook_id, &id]).await? else {
        return Ok(None);
    };
    let list = with_attempts(client, vec![delivery_from_row(&row)?]).await?;
    Ok(list.into_iter().next())
}

/// Asks for a new attempt now. A finished delivery becomes pending for one
/// attempt; a pending one that is not in flight is brought forward. Returns
/// false when there is no such delivery.
pub async fn redeliver(
    client: &impl deadpool_postgres::GenericClient,
    webhook_id: Uuid,
    id: Uuid,
) -> Result<bool, DbError> {
    let n = client
        .execute(
            "UPDATE webhook_deliveries SET \
               single_attempt = CASE WHEN status = 'pending' THEN single_attempt ELSE true END, \
               next_attempt_at = CASE WHEN status = 'pending' AND lease_token IS NOT NULL \
                                      THEN next_attempt_at ELSE now() END, \
               status = 'pending', updated_at = now() \
             WHERE webhook_id = $1 AND id = $2",
            &[&webhook_id, &id],
        )
        .await?;
    Ok(n == 1)
}

/// Puts every failed or dead delivery of an endpoint created since `since`
/// back to pending, due now, with a fresh retry schedule. Returns how many.
pub async fn recover(
    client: &impl deadpool_postgres::GenericClient,
    webhook_id: Uuid,
    since: DateTime<Utc>,
) -> Result<u64, DbError> {
    Ok(client
        .execute(
            "UPDATE webhook_deliveries SET status = 'pending', retry_base = attempts, \
             single_attempt = false, next_attempt_at = now(), lease_token = NULL, \
             updated_at = now() \
             WHERE webhook_id = $1 AND status IN ('failed','dead') AND created_at >= $2",
            &[&webhook_id, &since],
        )
        .await?)
}

#[cfg(test)]
mod tests {
    use super::subscribes;
    use uuid::Uuid;

    #[test]
    fn subscriptions_match_type_wildcard_and_project() {
        let p = Uuid::now_v7();
        let q = Uuid::now_v7();
        let ev = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(subscribes(&ev(&["*"]), None, "command.started", None));
        assert!(subscribes(
            &ev(&["command.failed"]),
            None,
            "command.failed",
            Some(p)
        ));
        assert!(!subscribes(
            &ev(&["command.failed"]),
            None,
            "command.started",
            Some(p)
        ));
        assert!(subscribes(&ev(&["*"]), Some(p), "command.failed", Some(p)));
        assert!(!subscribes(&ev(&["*"]), Some(p), "command.failed", Some(q)));
        assert!(!subscribes(&ev(&["*"]), Some(p), "command.failed", None));
    }
}

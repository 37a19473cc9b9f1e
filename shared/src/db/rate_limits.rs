//! `rate_limits` repository: per-key counters of admitted requests per
//! window, shared by every API instance.
//!
//! One statement counts one request, or a lease of several (the API's
//! `rate_budgets`), and does everything: it reads the previous window's
//! count, conditionally upserts the current window's row (only when the
//! sliding estimate admits all of them), and returns both counts with
//! PostgreSQL's clock, so instances with skewed clocks agree. Rows are
//! per (key, window): different keys never touch the same row, so they
//! never wait on each other's locks.

use uuid::Uuid;

use super::DbError;
use crate::domain::RateLimit;
use crate::ratelimit::Observation;

const HIT: &str = "\
WITH w AS (
    SELECT e, floor(e / ws) * ws AS cur_s, ws, lim, wi, n
    FROM (SELECT extract(epoch FROM now())::float8 AS e, $2::int4::float8 AS ws,
                 $3::int4::float8 AS lim, $2::int4 AS wi, $4::int4 AS n) t
), p AS (
    SELECT COALESCE((SELECT r.count FROM rate_limits r, w
                     WHERE r.key_id = $1 AND r.window_start = to_timestamp(w.cur_s - w.ws)),
                    0)::float8 AS prev
), c AS (
    SELECT COALESCE((SELECT r.count FROM rate_limits r, w
                     WHERE r.key_id = $1 AND r.window_start = to_timestamp(w.cur_s)),
                    0) AS seen
), est AS (
    -- The previous window's weighted share of the estimate.
    SELECT p.prev * (1 - (w.e - w.cur_s) / w.ws) AS carried FROM w, p
), up AS (
    INSERT INTO rate_limits AS r (key_id, window_start, count, window_s)
    SELECT $1, to_timestamp(w.cur_s), w.n, w.wi FROM w, est
    WHERE est.carried + w.n <= w.lim
    ON CONFLICT (key_id, window_start) DO UPDATE SET count = r.count + (SELECT n FROM w)
    WHERE (SELECT carried FROM est) + r.count + (SELECT n FROM w) <= (SELECT lim FROM w)
    RETURNING r.count
)
SELECT (SELECT count FROM up) AS admitted_count, c.seen, p.prev, w.e - w.cur_s AS elapsed
FROM w, p, c";

/// Counts one request of `key_id` against `limit` if the sliding estimate
/// admits it; one round trip.
pub async fn hit(
    client: &impl deadpool_postgres::GenericClient,
    key_id: Uuid,
    limit: RateLimit,
) -> Result<Observation, DbError> {
    take(client, key_id, limit, 1).await
}

/// Counts `n` requests of `key_id` at once, all or none: only if the
/// sliding estimate admits all of them. `current` is the count with them.
pub async fn take(
    client: &impl deadpool_postgres::GenericClient,
    key_id: Uuid,
    limit: RateLimit,
    n: i32,
) -> Result<Observation, DbError> {
    // Prepared once per connection: one round trip per request, not two.
    let stmt = client.prepare_cached(HIT).await?;
    let row = client
        .query_one(
            &stmt,
            &[&key_id, &limit.window_s, &limit.requests, &n.max(1)],
        )
        .await?;
    let admitted: Option<i32> = row.try_get("admitted_count")?;
    let seen: i32 = row.try_get("seen")?;
    let prev: f64 = row.try_get("prev")?;
    let elapsed: f64 = row.try_get("elapsed")?;
    Ok(Observation {
        admitted: admitted.is_some(),
        current: i64::from(admitted.unwrap_or(seen)),
        previous: prev as i64,
        elapsed_s: elapsed,
    })
}

/// Deletes counters older than two of their windows (they no longer count);
/// returns how many.
pub async fn delete_expired(
    client: &impl deadpool_postgres::GenericClient,
) -> Result<u64, DbError> {
    Ok(client
        .execute(
            "DELETE FROM rate_limits WHERE window_start < now() - make_interval(secs => 2 * window_s)",
            &[],
        )
        .await?)
}

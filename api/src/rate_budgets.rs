//! Rate-limit budgets leased from PostgreSQL, so most requests pass the
//! sliding-window limit without a database statement.
//!
//! The counters stay in PostgreSQL (`db::rate_limits`), shared by every
//! instance. Counting each request there made every request of one key
//! update the same row, one committed transaction after another: 64 clients
//! of one key queued on that row lock (`pgbench` of the statement alone:
//! 1,270 statements/s at 50 ms average latency for one key, 3,800/s at
//! 17 ms for 64 keys), which capped enqueue near 600 requests/s.
//!
//! Instead an instance asks for a few requests' worth at once
//! ([`db::rate_limits::take`]): the whole lease is counted, atomically and
//! only if the sliding estimate admits all of it, and this instance hands
//! the rest out to the key's next requests until the window ends. The
//! lease is sized from what the last statement said was left: a
//! sixteenth of it, at most [`MAX_LEASE`], one when little is left. So:
//!
//! - Never more than the limit is admitted: every request is counted
//!   before it is admitted, here or in PostgreSQL.
//! - Near the limit (under 32 left) every request counts itself in
//!   PostgreSQL as before, so small limits behave exactly as before.
//! - With several instances, requests leased by one instance and not yet
//!   used there count as used for the others: a key spread over instances
//!   can be refused slightly early, by at most what the instances hold
//!   (each at most a sixteenth of what was left when it leased), and never
//!   admitted late. A lease is worthless once its window ends (by
//!   PostgreSQL's clock when it was taken, counted down here on a
//!   monotonic clock: near the end of a window a leased request can pass
//!   a round trip's worth of milliseconds into the next one).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus::IntCounter;
use rdev_shared::db::{DbError, Pool, rate_limits};
use rdev_shared::domain::RateLimit;
use rdev_shared::ratelimit::{self, Observation};
use uuid::Uuid;

/// Most requests one statement leases.
pub const MAX_LEASE: i32 = 64;
/// A lease is at most this share of what the estimate leaves.
const LEASE_SHARE: i64 = 16;
/// Most keys with a lease held per instance; past it a key's requests each
/// count themselves in PostgreSQL (still correct, only slower).
const MAX_KEYS: usize = 10_000;

/// What one lease left this instance, per key and limit.
#[derive(Clone, Copy, Debug)]
struct Lease {
    /// Requests leased and not yet handed out.
    left: i64,
    /// The counters right after the lease was counted.
    counted: Observation,
    /// When that was (to age `elapsed_s`).
    at: Instant,
    /// When the lease's window ends.
    ends: Instant,
}

impl Lease {
    /// The counters as the next request should see them: leased requests
    /// not handed out yet do not count as used.
    fn observation(&self, now: Instant) -> Observation {
        Observation {
            admitted: true,
            current: self.counted.current - self.left,
            previous: self.counted.previous,
            elapsed_s: self.counted.elapsed_s + (now - self.at).as_secs_f64(),
        }
    }
}

/// The leases of this instance.
#[derive(Debug)]
pub struct RateBudgets {
    leases: Mutex<HashMap<(Uuid, i32, i32), Lease>>,
    /// Requests served from a lease (`cache_hits_total{cache="rate_budgets"}`).
    hits: IntCounter,
    /// Requests counted in PostgreSQL (`cache_misses_total{…}`).
    misses: IntCounter,
}

impl RateBudgets {
    /// No leases yet; counts hits and misses on the given counters.
    pub fn new(hits: IntCounter, misses: IntCounter) -> Self {
        Self {
            leases: Mutex::default(),
            hits,
            misses,
        }
    }

    /// Counts one request of `key` against `limit`: from this instance's
    /// lease when it has one, else in PostgreSQL (leasing more when much is
    /// left).
    pub async fn hit(
        &self,
        pool: &Pool,
        key: Uuid,
        limit: RateLimit,
    ) -> Result<Observation, DbError> {
        let id = (key, limit.requests, limit.window_s);
        let now = Instant::now();
        let want = match self.take_leased(id, now) {
            Ok(observed) => {
                self.hits.inc();
                return Ok(observed);
            }
            Err(want) => want,
        };
        self.misses.inc();
        let client = pool.get().await?;
        let mut observed = rate_limits::take(&client, key, limit, want).await?;
        let mut leased = want;
        if !observed.admitted && want > 1 {
            // The lease did not fit; this request alone may.
            observed = rate_limits::take(&client, key, limit, 1).await?;
            leased = 1;
        }
        if !observed.admitted
            && let Ok(leased) = self.take_leased(id, Instant::now())
        {
            // Refused, but another request of the key leased meanwhile:
            // those requests are counted already.
            return Ok(leased);
        }
        Ok(self.keep(id, limit, observed, leased, Instant::now()))
    }

    /// One request from the key's lease, or how many to lease next.
    fn take_leased(&self, id: (Uuid, i32, i32), now: Instant) -> Result<Observation, i32> {
        let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        let Some(lease) = leases.get_mut(&id) else {
            return Err(lease_size(None));
        };
        if now >= lease.ends {
            leases.remove(&id);
            return Err(1);
        }
        if lease.left > 0 {
            lease.left -= 1;
            return Ok(lease.observation(now));
        }
        let limit = RateLimit {
            requests: id.1,
            window_s: id.2,
        };
        Err(lease_size(Some(
            ratelimit::decide(limit, lease.observation(now)).remaining,
        )))
    }

    /// Records what the statement counted (`leased` requests, one of them
    /// this request's) and answers this request.
    fn keep(
        &self,
        id: (Uuid, i32, i32),
        limit: RateLimit,
        observed: Observation,
        leased: i32,
        now: Instant,
    ) -> Observation {
        let left = if observed.admitted {
            i64::from(leased) - 1
        } else {
            0
        };
        let window = f64::from(limit.window_s);
        let lease = Lease {
            left,
            counted: observed,
            at: now,
            ends: now + Duration::from_secs_f64((window - observed.elapsed_s).clamp(0.0, window)),
        };
        let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        if leases.len() >= MAX_KEYS && !leases.contains_key(&id) {
            leases.retain(|_, l| now < l.ends);
        }
        if leases.len() < MAX_KEYS || leases.contains_key(&id) {
            // A lease of another request of this key may still hold some:
            // they add up.
            let carried = leases
                .get(&id)
                .filter(|l| now < l.ends)
                .map_or(0, |l| l.left);
            leases.insert(
                id,
                Lease {
                    left: lease.left + carried,
                    ..lease
                },
            );
        }
        Observation {
            admitted: observed.admitted,
            ..lease.observation(now)
        }
    }

    /// Whether no key has a lease.
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.leases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }
}

/// How many requests to lease when the estimate leaves `remaining` (one
/// when unknown: the first statement of a key tells).
fn lease_size(remaining: Option<i64>) -> i32 {
    let Some(remaining) = remaining else { return 1 };
    let share = remaining / LEASE_SHARE;
    i32::try_from(share.clamp(1, i64::from(MAX_LEASE))).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: (Uuid, i32, i32) = (Uuid::nil(), 1000, 60);
    const LIMIT: RateLimit = RateLimit {
        requests: 1000,
        window_s: 60,
    };

    fn budgets() -> RateBudgets {
        let counter = || IntCounter::new("c", "c").expect("counter");
        RateBudgets::new(counter(), counter())
    }

    fn counted(current: i64, elapsed_s: f64) -> Observation {
        Observation {
            admitted: true,
            current,
            previous: 0,
            elapsed_s,
        }
    }

    #[test]
    fn a_lease_is_a_sixteenth_of_what_is_left_within_bounds() {
        assert_eq!(lease_size(None), 1);
        assert_eq!(lease_size(Some(0)), 1);
        assert_eq!(lease_size(Some(31)), 1);
        assert_eq!(lease_size(Some(320)), 20);
        assert_eq!(lease_size(Some(1_000_000)), MAX_LEASE);
    }

    #[test]
    fn leased_requests_are_handed_out_one_each_then_a_new_lease_is_asked() {
        let b = budgets();
        let t0 = Instant::now();
        assert_eq!(b.take_leased(KEY, t0), Err(1), "nothing known yet");
        // The statement counted 3 (this request and two more): 10 used in all.
        let first = b.keep(KEY, LIMIT, counted(10, 1.0), 3, t0);
        assert_eq!(first.current, 8, "the two leased count as unused");
        let second = b.take_leased(KEY, t0).expect("leased");
        assert_eq!(second.current, 9);
        let third = b.take_leased(KEY, t0).expect("leased");
        assert_eq!(third.current, 10);
        // Spent: the next lease is a sixteenth of the 990 left.
        assert_eq!(b.take_leased(KEY, t0), Err(61));
    }

    #[test]
    fn a_lease_ends_with_its_window() {
        let b = budgets();
        let t0 = Instant::now();
        // 59 s into a 60 s window: the lease is good for one more second.
        b.keep(KEY, LIMIT, counted(10, 59.0), 5, t0);
        assert!(b.take_leased(KEY, t0 + Duration::from_millis(500)).is_ok());
        assert_eq!(b.take_leased(KEY, t0 + Duration::from_secs(2)), Err(1));
        assert!(b.is_empty());
    }

    #[test]
    fn a_refused_request_leases_nothing() {
        let b = budgets();
        let t0 = Instant::now();
        let refused = Observation {
            admitted: false,
            ..counted(1000, 5.0)
        };
        let o = b.keep(KEY, LIMIT, refused, 1, t0);
        assert!(!o.admitted);
        assert_eq!(o.current, 1000);
        assert_eq!(
            b.take_leased(KEY, t0),
            Err(1),
            "nothing left: one at a time"
        );
    }
}

//! The sliding-window-counter rate limit (Cloudflare's algorithm,
//! <https://blog.cloudflare.com/counting-things-a-lot-of-different-things/>):
//! a key's request rate is estimated as
//! `previous_window_count × (1 − elapsed / window) + current_window_count`
//! and a request is admitted when the estimate, counting it, stays within
//! the budget. This module is the pure arithmetic; the counters live in
//! PostgreSQL (`db::rate_limits`) so every API instance shares them.

use crate::domain::RateLimit;

/// What the counters said about one request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Observation {
    /// Whether the request was admitted (and counted).
    pub admitted: bool,
    /// Admitted requests in the current window, this one included if admitted.
    pub current: i64,
    /// Admitted requests in the previous window.
    pub previous: i64,
    /// Seconds since the current window started (0 ≤ elapsed < window).
    pub elapsed_s: f64,
}

/// The answer, with what the `RateLimit-*` and `Retry-After` headers say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// `RateLimit-Limit`: the budget per window.
    pub limit: i64,
    /// `RateLimit-Remaining`: requests still admitted right now.
    pub remaining: i64,
    /// `RateLimit-Reset`: seconds until the current window ends.
    pub reset_s: u64,
    /// `Retry-After` for a refused request: seconds until one more would pass.
    pub retry_after_s: u64,
}

fn estimate(previous: f64, current: f64, elapsed: f64, window: f64) -> f64 {
    previous * (1.0 - elapsed / window).max(0.0) + current
}

/// Turns counters into a decision for `limit`.
pub fn decide(limit: RateLimit, o: Observation) -> Decision {
    let w = f64::from(limit.window_s);
    let n = f64::from(limit.requests);
    let elapsed = o.elapsed_s.clamp(0.0, w);
    let (prev, cur) = (o.previous as f64, o.current as f64);
    let est = estimate(prev, cur, elapsed, w);
    let remaining = (n - est).floor().max(0.0) as i64;
    let reset_s = (w - elapsed).ceil().max(1.0) as u64;
    let retry_after_s = if o.admitted {
        0
    } else {
        retry_after(n, prev, cur, elapsed, w)
    };
    Decision {
        allowed: o.admitted,
        limit: i64::from(limit.requests),
        remaining,
        reset_s,
        retry_after_s,
    }
}

/// Seconds from now until `estimate + 1 ≤ n`, assuming no other request is
/// admitted meanwhile; at least 1.
fn retry_after(n: f64, prev: f64, cur: f64, elapsed: f64, w: f64) -> u64 {
    let t = if cur + 1.0 <= n && prev > 0.0 {
        // Still in this window, once the previous window's weight has decayed:
        // prev × (1 − (elapsed + t)/w) + cur + 1 ≤ n.
        w * (1.0 - (n - cur - 1.0) / prev) - elapsed
    } else {
        // Only in the next window, where `cur` becomes the previous count:
        // cur × (1 − e/w) + 1 ≤ n.
        let e = if cur > 0.0 {
            (w * (1.0 - (n - 1.0) / cur)).max(0.0)
        } else {
            0.0
        };
        (w - elapsed) + e
    };
    t.ceil().max(1.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: RateLimit = RateLimit {
        requests: 10,
        window_s: 60,
    };

    fn obs(admitted: bool, current: i64, previous: i64, elapsed_s: f64) -> Observation {
        Observation {
            admitted,
            current,
            previous,
            elapsed_s,
        }
    }

    #[test]
    fn the_limit_th_request_passes_with_nothing_remaining() {
        let d = decide(L, obs(true, 10, 0, 5.0));
        assert!(d.allowed);
        assert_eq!((d.limit, d.remaining, d.reset_s), (10, 0, 55));
    }

    #[test]
    fn a_full_window_waits_for_the_next_one() {
        // 10 admitted in this window, none before: the next one passes when the
        // window turns and 10 × (1 − e/60) + 1 ≤ 10, i.e. e ≥ 6 s.
        let d = decide(L, obs(false, 10, 0, 20.0));
        assert!(!d.allowed);
        assert_eq!(d.remaining, 0);
        assert_eq!(d.retry_after_s, 40 + 6);
    }

    #[test]
    fn the_previous_window_decays_within_this_one() {
        // prev 10, cur 2 at e = 30: estimate 5 + 2 = 7 → 3 remaining.
        let d = decide(L, obs(true, 2, 10, 30.0));
        assert_eq!(d.remaining, 3);
        // prev 10, cur 5, e = 6: estimate 9 + 5 = 14 > 10; one more passes when
        // 10 × (1 − (6 + t)/60) + 6 ≤ 10 → t ≥ 30.
        let d = decide(L, obs(false, 5, 10, 6.0));
        assert!(!d.allowed);
        assert_eq!(d.retry_after_s, 30);
    }

    #[test]
    fn retry_after_is_at_least_one_second() {
        let d = decide(L, obs(false, 9, 10, 53.9));
        assert!(d.retry_after_s >= 1);
    }
}

//! A circuit breaker: after `failure_threshold` consecutive failures the
//! circuit opens and calls are refused for `open_for`; then one probe call
//! is let through (half-open). Its success closes the circuit, its failure
//! opens it again. Used per webhook destination host and around the
//! Kubernetes API, so a dead dependency is not hammered.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Settings of a breaker.
#[derive(Clone, Copy, Debug)]
pub struct BreakerConfig {
    /// Consecutive failures that open the circuit.
    pub failure_threshold: u32,
    /// How long the circuit stays open before a probe is allowed.
    pub open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            open_for: Duration::from_secs(30),
        }
    }
}

/// What the breaker is doing, for metrics (`circuit_breaker_state`: 0, 1, 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls flow.
    Closed,
    /// Calls are refused until the open period ends.
    Open,
    /// One probe call is in flight; others are refused.
    HalfOpen,
}

impl BreakerState {
    /// Gauge value: closed 0, open 1, half-open 2.
    pub fn as_gauge(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    failures: u32,
    opened_at: Option<Instant>,
}

/// A thread-safe circuit breaker.
#[derive(Debug)]
pub struct Breaker {
    cfg: BreakerConfig,
    inner: Mutex<Inner>,
}

/// Returned when the circuit refuses a call; says when to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("circuit open; retry in {retry_in:?}")]
pub struct Refused {
    /// Time until a probe will be allowed.
    pub retry_in: Duration,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(cfg: BreakerConfig) -> Self {
        Self {
            cfg,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                failures: 0,
                opened_at: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Current state (an open circuit whose period ended reports `Open`
    /// until a call probes it).
    pub fn state(&self) -> BreakerState {
        self.lock().state
    }

    /// Asks to make a call: `Ok` to go ahead (then report with
    /// [`Breaker::success`] or [`Breaker::failure`]), `Err` to skip it.
    pub fn acquire(&self) -> Result<(), Refused> {
        self.acquire_at(Instant::now())
    }

    fn acquire_at(&self, now: Instant) -> Result<(), Refused> {
        let mut g = self.lock();
        match g.state {
            BreakerState::Closed => Ok(()),
            BreakerState::HalfOpen => Err(Refused {
                retry_in: self.cfg.open_for,
            }),
            BreakerState::Open => {
                let opened = g.opened_at.unwrap_or(now);
                let elapsed = now.saturating_duration_since(opened);
                if elapsed >= self.cfg.open_for {
                    g.state = BreakerState::HalfOpen;
                    Ok(())
                } else {
                    Err(Refused {
                        retry_in: self.cfg.open_for - elapsed,
                    })
                }
            }
        }
    }

    /// Reports a successful call: the circuit closes.
    pub fn success(&self) {
        let mut g = self.lock();
        g.state = BreakerState::Closed;
        g.failures = 0;
        g.opened_at = None;
    }

    /// Reports a failed call.
    pub fn failure(&self) {
        self.failure_at(Instant::now());
    }

    fn failure_at(&self, now: Instant) {
        let mut g = self.lock();
        g.failures = g.failures.saturating_add(1);
        let trip = g.state == BreakerState::HalfOpen || g.failures >= self.cfg.failure_threshold;
        if trip {
            g.state = BreakerState::Open;
            g.opened_at = Some(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(BreakerConfig {
            failure_threshold: 3,
            open_for: Duration::from_secs(10),
        })
    }

    #[test]
    fn opens_after_consecutive_failures_and_success_resets_the_count() {
        let b = breaker();
        let t = Instant::now();
        b.failure_at(t);
        b.failure_at(t);
        b.success();
        b.failure_at(t);
        b.failure_at(t);
        assert_eq!(b.state(), BreakerState::Closed);
        b.failure_at(t);
        assert_eq!(b.state(), BreakerState::Open);
        let refused = b.acquire_at(t + Duration::from_secs(4)).expect_err("open");
        assert_eq!(refused.retry_in, Duration::from_secs(6));
    }

    #[test]
    fn a_probe_after_the_open_period_closes_or_reopens() {
        let b = breaker();
        let t = Instant::now();
        for _ in 0..3 {
            b.failure_at(t);
        }
        let later = t + Duration::from_secs(10);
        assert!(b.acquire_at(later).is_ok(), "one probe");
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.acquire_at(later).is_err(), "only one probe at a time");
        b.failure_at(later);
        assert_eq!(
            b.state(),
            BreakerState::Open,
            "a failed probe reopens at once"
        );
        assert!(b.acquire_at(later + Duration::from_secs(1)).is_err());
        assert!(b.acquire_at(later + Duration::from_secs(10)).is_ok());
        b.success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.acquire_at(later + Duration::from_secs(10)).is_ok());
    }
}

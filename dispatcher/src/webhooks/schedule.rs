//! The retry schedule: what happens after an attempt fails. Pure functions,
//! so the policy is tested without a clock or a network.

use std::time::Duration;

use rand::Rng;
use rdev_shared::config::parse_duration;

/// Delays before each attempt: entry 0 is the delay of the first attempt
/// after the event, entry `n` the delay after the `n`-th failure. Its length
/// is the number of attempts a delivery gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetrySchedule(Vec<Duration>);

impl Default for RetrySchedule {
    /// `0s,5s,5m,30m,2h,5h,10h,10h`: eight attempts over about a day.
    fn default() -> Self {
        const HOUR: u64 = 3600;
        Self(
            [0, 5, 300, 30 * 60, 2 * HOUR, 5 * HOUR, 10 * HOUR, 10 * HOUR]
                .map(Duration::from_secs)
                .to_vec(),
        )
    }
}

impl RetrySchedule {
    /// A schedule from its delays; `None` when empty.
    pub fn new(delays: Vec<Duration>) -> Option<Self> {
        (!delays.is_empty()).then_some(Self(delays))
    }

    /// Delay of the first attempt.
    pub fn first(&self) -> Duration {
        self.0[0]
    }

    /// Number of attempts.
    pub fn attempts(&self) -> usize {
        self.0.len()
    }

    /// Delay after `made` failed attempts of the current cycle; `None` when
    /// the schedule is exhausted.
    pub fn delay_after(&self, made: usize) -> Option<Duration> {
        self.0.get(made).copied()
    }
}

/// Parses `0s,5s,5m,30m,2h` (`RDEV_WEBHOOK_RETRY_SCHEDULE`).
pub fn parse_schedule(s: &str) -> Result<RetrySchedule, String> {
    let delays = s
        .split(',')
        .map(|part| parse_duration(part.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    if delays.len() > 100 {
        return Err("at most 100 attempts".into());
    }
    RetrySchedule::new(delays).ok_or_else(|| "the schedule needs at least one delay".into())
}

/// Spreads a delay by ±10% so endpoints that failed together do not retry
/// in lockstep; zero stays zero.
pub fn jitter(d: Duration) -> Duration {
    if d.is_zero() {
        return d;
    }
    d.mul_f64(rand::rng().random_range(0.9..=1.1))
}

/// Reads a `Retry-After` value: delay-seconds or an HTTP date
/// (<https://www.rfc-editor.org/rfc/rfc9110#field.retry-after>).
pub fn parse_retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    (at.with_timezone(&chrono::Utc) - now).to_std().ok()
}

/// What follows a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterFailure {
    /// Retry after this delay.
    Retry(Duration),
    /// The schedule is exhausted.
    Dead,
    /// A one-off attempt failed; no retries.
    Failed,
}

/// Decides what follows a failed attempt. `made` counts the attempts of the
/// current cycle including this one; a `Retry-After` (capped at `cap`) can
/// only lengthen the scheduled delay.
pub fn after_failure(
    schedule: &RetrySchedule,
    made: usize,
    single_attempt: bool,
    retry_after: Option<Duration>,
    cap: Duration,
) -> AfterFailure {
    if single_attempt {
        return AfterFailure::Failed;
    }
    match schedule.delay_after(made) {
        None => AfterFailure::Dead,
        Some(d) => {
            let d = jitter(d);
            AfterFailure::Retry(retry_after.map_or(d, |ra| d.max(ra.min(cap))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn the_default_schedule_parses() {
        let s = parse_schedule("0s,5s,5m,30m,2h,5h,10h,10h").expect("parses");
        assert_eq!(s.attempts(), 8);
        assert_eq!(s.first(), Duration::ZERO);
        assert_eq!(s.delay_after(2), Some(Duration::from_secs(300)));
        assert!(parse_schedule("").is_err());
        assert!(parse_schedule("1s,,2s").is_err());
    }

    #[test]
    fn jitter_stays_within_ten_percent_and_keeps_zero() {
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
        for _ in 0..1000 {
            let j = jitter(Duration::from_secs(100));
            assert!(
                j >= Duration::from_secs(90) && j <= Duration::from_secs(110),
                "{j:?}"
            );
        }
    }

    #[test]
    fn failures_retry_until_the_schedule_ends() {
        let s = parse_schedule("0s,1s,1s").expect("parses");
        assert!(matches!(
            after_failure(&s, 1, false, None, S),
            AfterFailure::Retry(_)
        ));
        assert!(matches!(
            after_failure(&s, 2, false, None, S),
            AfterFailure::Retry(_)
        ));
        assert_eq!(after_failure(&s, 3, false, None, S), AfterFailure::Dead);
        assert_eq!(after_failure(&s, 1, true, None, S), AfterFailure::Failed);
    }

    #[test]
    fn retry_after_lengthens_but_is_capped() {
        let s = parse_schedule("0s,1s,1s").expect("parses");
        let cap = Duration::from_secs(60);
        let got = after_failure(&s, 1, false, Some(Duration::from_secs(30)), cap);
        assert_eq!(got, AfterFailure::Retry(Duration::from_secs(30)));
        let got = after_failure(&s, 1, false, Some(Duration::from_secs(7200)), cap);
        assert_eq!(got, AfterFailure::Retry(cap));
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .expect("date")
            .with_timezone(&chrono::Utc);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Thu, 01 Jan 2026 00:01:00 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}

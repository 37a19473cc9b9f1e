//! One circuit breaker per destination (`host:port`), in a bounded map: a
//! dead receiver is not hammered, and a flood of distinct hosts cannot grow
//! the map without limit (idle closed breakers are evicted first, then the
//! least recently used).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdev_shared::breaker::{Breaker, BreakerConfig, BreakerState};
use rdev_shared::metrics::Metrics;

/// A breaker unused for this long may be evicted even when the map is not full.
const IDLE: Duration = Duration::from_secs(600);

struct Entry {
    breaker: Arc<Breaker>,
    last_used: Instant,
}

/// Breakers by destination.
pub struct Breakers {
    cfg: BreakerConfig,
    max: usize,
    map: Mutex<HashMap<String, Entry>>,
    metrics: Option<Arc<Metrics>>,
}

impl Breakers {
    /// An empty map holding at most `max` breakers.
    /// Evicted destinations leave the `circuit_breaker_state` gauge.
    pub fn new(cfg: BreakerConfig, max: usize, metrics: Option<Arc<Metrics>>) -> Self {
        Self {
            cfg,
            max: max.max(1),
            map: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// Publishes a destination's state on the `circuit_breaker_state` gauge.
    pub fn report(&self, destination: &str, breaker: &Breaker) {
        if let Some(m) = &self.metrics {
            m.circuit_breaker_state
                .with_label_values(&[&gauge_label(destination)])
                .set(breaker.state().as_gauge());
        }
    }

    fn forget(&self, destination: &str) {
        if let Some(m) = &self.metrics {
            let _ = m
                .circuit_breaker_state
                .remove_label_values(&[&gauge_label(destination)]);
        }
    }

    /// The breaker of a destination, created closed on first use.
    pub fn get(&self, destination: &str) -> Arc<Breaker> {
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = map.get_mut(destination) {
            e.last_used = now;
            return e.breaker.clone();
        }
        if map.len() >= self.max {
            map.retain(|_, e| {
                e.breaker.state() != BreakerState::Closed || now.duration_since(e.last_used) < IDLE
            });
        }
        if map.len() >= self.max
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
            self.forget(&oldest);
        }
        let breaker = Arc::new(Breaker::new(self.cfg));
        map.insert(
            destination.to_owned(),
            Entry {
                breaker: breaker.clone(),
                last_used: now,
            },
        );
        breaker
    }

    /// Number of breakers held.
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether no breaker is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Label of a destination on the shared breaker gauge.
fn gauge_label(destination: &str) -> String {
    format!("webhook:{destination}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_map_stays_bounded_and_keeps_the_same_breaker_per_host() {
        let b = Breakers::new(BreakerConfig::default(), 3, None);
        let a1 = b.get("a:80");
        assert!(Arc::ptr_eq(&a1, &b.get("a:80")));
        for h in ["b:80", "c:80", "d:80", "e:80"] {
            b.get(h);
        }
        assert_eq!(b.len(), 3);
    }
}

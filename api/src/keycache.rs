//! Cached API key lookups, so an authenticated request costs no database
//! read for its key.
//!
//! Bounded (moka, 10 000 entries) with TTL `CACHE_TTL`. Freshness comes from
//! the control exchange: every key change is announced there and every API
//! instance empties its cache when it hears it ([`crate::control`]). While
//! this instance is not listening (broker down, reconnecting), an entry
//! older than [`BACKSTOP`] is reloaded, so a revocation still takes effect
//! within about a second.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub use rdev_shared::cache::BACKSTOP;
use rdev_shared::cache::BoundedCache;
use rdev_shared::db::{self, DbError, Pool};
use rdev_shared::domain::ApiKey;

/// Most keys held per instance.
pub const CAPACITY: u64 = 10_000;
/// `last_used_at` is written at most this often per key and instance.
const TOUCH_EVERY: Duration = Duration::from_secs(60);

/// Denials of one key that may be written to the audit log: a token bucket
/// (burst [`DenialBudget::BURST`], one more per second), so a revoked or
/// misplaced key hammering the API cannot grow the log without bound. The
/// next recorded denial says how many were skipped.
#[derive(Debug)]
pub struct DenialBudget {
    state: std::sync::Mutex<(f64, Instant, u64)>,
}

impl DenialBudget {
    /// Denials recorded back to back before throttling starts.
    pub const BURST: f64 = 20.0;

    fn new() -> Self {
        Self {
            state: std::sync::Mutex::new((Self::BURST, Instant::now(), 0)),
        }
    }

    /// `Some(skipped since the last recorded one)` when this denial may be
    /// recorded, `None` when it is to be skipped (and counted).
    pub fn take(&self) -> Option<u64> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (tokens, last, skipped) = &mut *st;
        *tokens = (*tokens + last.elapsed().as_secs_f64()).min(Self::BURST);
        *last = Instant::now();
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Some(std::mem::take(skipped))
        } else {
            *skipped += 1;
            None
        }
    }
}

/// A key as loaded, with its stored hash for the constant-time comparison.
pub struct CachedKey {
    /// The key.
    pub key: ApiKey,
    /// `api_keys.secret_hash`.
    pub stored_hash: Vec<u8>,
    /// Budget of audited denials.
    pub denials: Arc<DenialBudget>,
    loaded: Instant,
    /// Milliseconds after `loaded` of the last `last_used_at` write (+1; 0 = never).
    touched_ms: AtomicU64,
}

impl CachedKey {
    /// Whether this request should record the key's use (at most once a
    /// minute per entry), claiming the slot if so.
    pub fn should_touch(&self) -> bool {
        let now = self.loaded.elapsed().as_millis() as u64 + 1;
        let last = self.touched_ms.load(Ordering::Relaxed);
        (last == 0 || now.saturating_sub(last) >= TOUCH_EVERY.as_millis() as u64)
            && self
                .touched_ms
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    }
}

/// The per-instance key cache.
pub struct KeyCache {
    inner: BoundedCache<[u8; 32], CachedKey>,
}

impl KeyCache {
    /// An empty cache whose entries live at most `ttl`; hits and misses are
    /// counted in the given counters.
    pub fn new(
        ttl: Duration,
        hits: prometheus::IntCounter,
        misses: prometheus::IntCounter,
    ) -> Arc<Self> {
        Arc::new(Self {
            inner: BoundedCache::new(CAPACITY, ttl, hits, misses),
        })
    }

    /// Records whether invalidations are being received.
    pub fn set_listening(&self, on: bool) {
        self.inner.set_listening(on);
    }

    /// Forgets every entry (a key changed somewhere).
    pub fn invalidate_all(&self) {
        self.inner.invalidate_all();
    }

    /// The key whose secret hashes to `hash`, from the cache or PostgreSQL.
    pub async fn lookup(
        &self,
        pool: &Pool,
        hash: &[u8; 32],
    ) -> Result<Option<Arc<CachedKey>>, DbError> {
        self.inner
            .get_or_load(hash, || async {
                let client = pool.get().await?;
                Ok(db::keys::find_by_hash(&client, hash)
                    .await?
                    .map(|(key, stored_hash)| CachedKey {
                        key,
                        stored_hash,
                        denials: Arc::new(DenialBudget::new()),
                        loaded: Instant::now(),
                        touched_ms: AtomicU64::new(0),
                    }))
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denial_records_are_throttled_and_count_what_they_skip() {
        let b = DenialBudget::new();
        for _ in 0..DenialBudget::BURST as usize {
            assert_eq!(b.take(), Some(0));
        }
        assert_eq!(b.take(), None);
        assert_eq!(b.take(), None);
        // One token back after a second.
        b.state.lock().expect("lock").1 -= Duration::from_millis(1100);
        assert_eq!(b.take(), Some(2));
    }
}

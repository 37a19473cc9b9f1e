//! A bounded, expiring cache of database lookups whose freshness comes from
//! invalidations broadcast on the control exchange.
//!
//! Bounded (moka, `capacity` entries) with TTL `CACHE_TTL`. While the owner
//! is not receiving invalidations (broker down, reconnecting), an entry
//! older than [`BACKSTOP`] is reloaded, so a change elsewhere still takes
//! effect within about a second. Misses are not cached: something created
//! elsewhere is visible at once. Hits and misses are counted.

use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus::IntCounter;

/// Age beyond which an entry is not trusted while invalidations may be missed.
pub const BACKSTOP: Duration = Duration::from_secs(1);

struct Entry<V> {
    value: Arc<V>,
    loaded: Instant,
}

impl<V> Clone for Entry<V> {
    fn clone(&self) -> Self {
        Self {
            value: self.value.clone(),
            loaded: self.loaded,
        }
    }
}

/// The cache. `V` is shared out as `Arc<V>`.
pub struct BoundedCache<K, V> {
    cache: moka::future::Cache<K, Entry<V>>,
    listening: AtomicBool,
    /// Bumped by every invalidation, so a load that raced one does not
    /// store what it read before it.
    generation: AtomicU64,
    hits: IntCounter,
    misses: IntCounter,
}

impl<K, V> BoundedCache<K, V>
where
    K: Hash + Eq + Send + Sync + Clone + 'static,
    V: Send + Sync + 'static,
{
    /// A cache of at most `capacity` entries living at most `ttl`.
    pub fn new(capacity: u64, ttl: Duration, hits: IntCounter, misses: IntCounter) -> Self {
        Self {
            cache: moka::future::Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl.max(Duration::from_millis(1)))
                .build(),
            listening: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            hits,
            misses,
        }
    }

    /// Records whether invalidations are being received.
    pub fn set_listening(&self, on: bool) {
        self.listening.store(on, Ordering::Release);
    }

    /// Forgets every entry.
    pub fn invalidate_all(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.cache.invalidate_all();
    }

    /// Forgets one entry.
    pub async fn invalidate(&self, key: &K) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.cache.invalidate(key).await;
    }

    /// The cached value if there is a trustworthy one; never loads.
    pub async fn get_cached(&self, key: &K) -> Option<Arc<V>> {
        let e = self.cache.get(key).await?;
        if self.listening.load(Ordering::Acquire) || e.loaded.elapsed() < BACKSTOP {
            self.hits.inc();
            Some(e.value)
        } else {
            None
        }
    }

    /// The cached value, or the one `load` finds (stored unless an
    /// invalidation happened meanwhile). `Ok(None)` from `load` is not cached.
    pub async fn get_or_load<E, F, Fut>(&self, key: &K, load: F) -> Result<Option<Arc<V>>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<V>, E>>,
    {
        if let Some(e) = self.cache.get(key).await {
            if self.listening.load(Ordering::Acquire) || e.loaded.elapsed() < BACKSTOP {
                self.hits.inc();
                return Ok(Some(e.value));
            }
            self.cache.invalidate(key).await;
        }
        self.misses.inc();
        let generation = self.generation.load(Ordering::Acquire);
        let Some(value) = load().await? else {
            return Ok(None);
        };
        let value = Arc::new(value);
        if self.generation.load(Ordering::Acquire) == generation {
            self.cache
                .insert(
                    key.clone(),
                    Entry {
                        value: value.clone(),
                        loaded: Instant::now(),
                    },
                )
                .await;
        }
        Ok(Some(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache() -> (BoundedCache<u32, String>, IntCounter, IntCounter) {
        let (h, m) = (
            IntCounter::new("h", "h").expect("c"),
            IntCounter::new("m", "m").expect("c"),
        );
        (
            BoundedCache::new(10, Duration::from_secs(30), h.clone(), m.clone()),
            h,
            m,
        )
    }

    async fn load(v: Option<&str>) -> Result<Option<String>, ()> {
        Ok(v.map(str::to_owned))
    }

    #[tokio::test]
    async fn hits_misses_and_invalidation() {
        let (c, hits, misses) = cache();
        c.set_listening(true);
        assert_eq!(
            c.get_or_load(&1, || load(Some("a"))).await,
            Ok(Some(Arc::new("a".into())))
        );
        assert_eq!(
            c.get_or_load(&1, || load(Some("b"))).await,
            Ok(Some(Arc::new("a".into())))
        );
        assert_eq!((hits.get(), misses.get()), (1, 1));
        c.invalidate(&1).await;
        assert_eq!(
            c.get_or_load(&1, || load(Some("b"))).await,
            Ok(Some(Arc::new("b".into())))
        );
        // Absent values are not cached.
        assert_eq!(c.get_or_load(&2, || load(None)).await, Ok(None));
        assert_eq!(
            c.get_or_load(&2, || load(Some("c"))).await,
            Ok(Some(Arc::new("c".into())))
        );
    }

    #[tokio::test]
    async fn without_invalidations_entries_expire_after_the_backstop() {
        let (c, _, _) = cache();
        c.get_or_load(&1, || load(Some("a"))).await.expect("load");
        assert_eq!(
            c.get_or_load(&1, || load(Some("b"))).await,
            Ok(Some(Arc::new("a".into())))
        );
        tokio::time::sleep(BACKSTOP + Duration::from_millis(50)).await;
        assert_eq!(
            c.get_or_load(&1, || load(Some("b"))).await,
            Ok(Some(Arc::new("b".into())))
        );
    }
}

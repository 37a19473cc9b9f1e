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

/// How long a hash that matched no key is remembered: a client retrying an
/// unknown token costs no query meanwhile. (A secret is 32 random bytes, so
/// a hash that matched nothing will not match a key created later.)
pub const NEGATIVE_TTL: Duration = Duration::from_secs(5);
/// How long a key lookup waits for its share of the pool.
const LOOKUP_WAIT: Duration = Duration::from_secs(2);
/// Client addresses whose failures are tracked at once.
const TRACKED_ADDRESSES: u64 = 100_000;

/// What a lookup found.
pub enum Lookup {
    /// A key with this hash.
    Found(Arc<CachedKey>),
    /// No key has this hash.
    Unknown,
    /// The client address failed too often; nothing was queried.
    Throttled {
        /// Seconds until it may try an uncached key again.
        retry_after_s: u64,
    },
    /// The lookups' share of the pool is taken; nothing was queried.
    Busy,
}

/// A token bucket of failed authentications for one client address.
struct FailureBucket {
    tokens: f64,
    last: Instant,
}

/// The per-instance key cache.
pub struct KeyCache {
    inner: BoundedCache<[u8; 32], CachedKey>,
    /// Hashes that matched no key, remembered for [`NEGATIVE_TTL`].
    negative: moka::future::Cache<[u8; 32], ()>,
    /// Failed authentications per client address (token buckets).
    failures: moka::future::Cache<std::net::IpAddr, Arc<std::sync::Mutex<FailureBucket>>>,
    failure_limit: rdev_shared::domain::RateLimit,
    /// Key lookups that reach PostgreSQL run under these permits: a share
    /// of the pool, so a flood of unknown tokens leaves the rest of the
    /// pool to authenticated work.
    lookups: Arc<tokio::sync::Semaphore>,
    /// Key changes heard on this instance (the id; nil = "any key may have
    /// changed", after a gap in listening), for open event streams to
    /// re-check their key. Bounded ring; a lagging stream re-checks too.
    changes: tokio::sync::broadcast::Sender<uuid::Uuid>,
}

impl KeyCache {
    /// An empty cache whose entries live at most `ttl`; hits and misses are
    /// counted in the given counters.
    pub fn new(
        ttl: Duration,
        hits: prometheus::IntCounter,
        misses: prometheus::IntCounter,
    ) -> Arc<Self> {
        Self::with_limits(
            ttl,
            hits,
            misses,
            rdev_shared::domain::RateLimit {
                requests: 30,
                window_s: 60,
            },
            4,
        )
    }

    /// An empty cache with a failed-authentication budget per client
    /// address and `lookup_permits` concurrent lookups in PostgreSQL.
    pub fn with_limits(
        ttl: Duration,
        hits: prometheus::IntCounter,
        misses: prometheus::IntCounter,
        failure_limit: rdev_shared::domain::RateLimit,
        lookup_permits: usize,
    ) -> Arc<Self> {
        let window = Duration::from_secs(u64::try_from(failure_limit.window_s).unwrap_or(60));
        Arc::new(Self {
            inner: BoundedCache::new(CAPACITY, ttl, hits, misses),
            negative: moka::future::Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(NEGATIVE_TTL)
                .build(),
            failures: moka::future::Cache::builder()
                .max_capacity(TRACKED_ADDRESSES)
                .time_to_idle(window * 2)
                .build(),
            failure_limit,
            lookups: Arc::new(tokio::sync::Semaphore::new(lookup_permits.max(1))),
            changes: tokio::sync::broadcast::channel(1024).0,
        })
    }

    /// A key changed (revoked, rotated, edited) here or on another instance:
    /// forget every entry and tell this instance's event streams.
    pub fn key_changed(&self, key_id: uuid::Uuid) {
        self.inner.invalidate_all();
        let _ = self.changes.send(key_id);
    }

    /// Key changes from now on (see [`KeyCache::key_changed`]).
    pub fn subscribe_changes(&self) -> tokio::sync::broadcast::Receiver<uuid::Uuid> {
        self.changes.subscribe()
    }

    /// Records whether invalidations are being received.
    pub fn set_listening(&self, on: bool) {
        self.inner.set_listening(on);
    }

    /// Forgets every entry (a key changed somewhere).
    pub fn invalidate_all(&self) {
        self.inner.invalidate_all();
    }

    /// Whether `ip` has failed budget left (without taking any).
    async fn failures_left(&self, ip: std::net::IpAddr) -> Result<(), u64> {
        let Some(bucket) = self.failures.get(&ip).await else {
            return Ok(());
        };
        let mut b = bucket.lock().unwrap_or_else(|e| e.into_inner());
        self.refill(&mut b);
        if b.tokens >= 1.0 {
            Ok(())
        } else {
            let per_s =
                f64::from(self.failure_limit.requests) / f64::from(self.failure_limit.window_s);
            Err(((1.0 - b.tokens) / per_s).ceil().max(1.0) as u64)
        }
    }

    fn refill(&self, b: &mut FailureBucket) {
        let max = f64::from(self.failure_limit.requests);
        let per_s = max / f64::from(self.failure_limit.window_s);
        b.tokens = (b.tokens + b.last.elapsed().as_secs_f64() * per_s).min(max);
        b.last = Instant::now();
    }

    /// Counts a failed authentication from `ip`.
    async fn record_failure(&self, ip: std::net::IpAddr) {
        let max = f64::from(self.failure_limit.requests);
        let bucket = self
            .failures
            .get_with(ip, async {
                Arc::new(std::sync::Mutex::new(FailureBucket {
                    tokens: max,
                    last: Instant::now(),
                }))
            })
            .await;
        let mut b = bucket.lock().unwrap_or_else(|e| e.into_inner());
        self.refill(&mut b);
        b.tokens = (b.tokens - 1.0).max(0.0);
    }

    /// Authenticates a hash for a client at `ip`: the cache first; then,
    /// unless the hash is known to match nothing or `ip` has used up its
    /// failed-authentication budget, PostgreSQL (within the lookups' share
    /// of the pool). An unknown hash counts against `ip`.
    pub async fn authenticate(
        &self,
        pool: &Pool,
        hash: &[u8; 32],
        ip: Option<std::net::IpAddr>,
    ) -> Result<Lookup, DbError> {
        if let Some(found) = self.inner.get_cached(hash).await {
            return Ok(Lookup::Found(found));
        }
        if self.negative.contains_key(hash) {
            if let Some(ip) = ip {
                self.record_failure(ip).await;
            }
            return Ok(Lookup::Unknown);
        }
        if let Some(ip) = ip
            && let Err(retry_after_s) = self.failures_left(ip).await
        {
            return Ok(Lookup::Throttled { retry_after_s });
        }
        let Ok(Ok(_permit)) = tokio::time::timeout(LOOKUP_WAIT, self.lookups.acquire()).await
        else {
            return Ok(Lookup::Busy);
        };
        match self.lookup(pool, hash).await? {
            Some(found) => Ok(Lookup::Found(found)),
            None => {
                self.negative.insert(*hash, ()).await;
                if let Some(ip) = ip {
                    self.record_failure(ip).await;
                }
                Ok(Lookup::Unknown)
            }
        }
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

    #[tokio::test]
    async fn an_address_out_of_failures_is_refused_before_any_query() {
        let c = |n: &str| prometheus::IntCounter::new(n, n).expect("counter");
        let cache = KeyCache::with_limits(
            Duration::from_secs(30),
            c("h"),
            c("m"),
            rdev_shared::domain::RateLimit {
                requests: 3,
                window_s: 3600,
            },
            1,
        );
        let ip: std::net::IpAddr = "203.0.113.7".parse().expect("ip");
        for _ in 0..3 {
            cache.record_failure(ip).await;
        }
        // A pool that cannot connect: reaching it would be an error.
        let cfg = rdev_shared::config::DbConfig {
            database_url: rdev_shared::config::Secret::new("postgres://nobody@127.0.0.1:1/x"),
            migrate_database_url: None,
            pool_size: 1,
            statement_timeout_s: 30,
        };
        let pool = rdev_shared::db::pool(&cfg).expect("pool");
        let r = cache.authenticate(&pool, &[7; 32], Some(ip)).await;
        assert!(matches!(r, Ok(Lookup::Throttled { .. })));
        // Another address still reaches the database (and fails there).
        let other: std::net::IpAddr = "203.0.113.8".parse().expect("ip");
        assert!(
            cache
                .authenticate(&pool, &[7; 32], Some(other))
                .await
                .is_err()
        );
    }

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

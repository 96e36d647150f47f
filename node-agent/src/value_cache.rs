//! The value cache: one entry per key, with the rules of the Vault backend's cache.
//!
//! Two bounded `moka` caches work together. `fresh` keeps an entry until its TTL (the
//! configured `cache_ttl`, shortened by a `ttl` in the response) and provides single flight:
//! concurrent callers of a missing entry share one request through `try_get_with`. `last_good`
//! keeps each value for `max_stale` beyond its TTL. When a request fails because the API is
//! unavailable (unreachable, timed out, 429 or 5xx), that value is served again, marked stale,
//! and the API is retried after a short interval. A 404 is cached as "not found" for the TTL
//! and drops the `last_good` value, as does any other failure (401, 403, an unusable body),
//! which is returned to the caller and not cached.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use envproxy_proto::SecretBytes;
use moka::future::Cache;

use crate::admin::audit::{note_cache, CacheOutcome};
use crate::expiry::{Deadlines, ExpireAt};
use crate::metrics::CacheBackend;

use super::client::Fetched;
use super::error::HttpError;

/// Minimum and maximum pause between requests for one key while its stale value is served.
/// Within these bounds the pause equals the cache TTL.
const MIN_STALE_RETRY: Duration = Duration::from_secs(1);
const MAX_STALE_RETRY: Duration = Duration::from_secs(5);

/// One cached response.
pub(crate) struct CachedValue {
    /// The value, or `None` when the API responded with 404.
    pub value: Option<Arc<SecretBytes>>,
    /// Served without asking the API until then.
    pub fresh_until: Instant,
    /// Served while the API is unavailable until then.
    pub stale_until: Instant,
    /// Set on an entry that serves a last good value during an outage.
    pub stale: bool,
}

/// Cache figures for the status report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CacheStats {
    pub entries: u64,
    pub hits: u64,
    pub misses: u64,
    pub stale_served: u64,
}

pub(crate) struct ValueCache {
    fresh: Cache<String, Arc<CachedValue>>,
    last_good: Cache<String, Arc<CachedValue>>,
    cache_ttl: Duration,
    max_stale: Duration,
    hits: AtomicU64,
    misses: AtomicU64,
    stale_served: AtomicU64,
    /// Start of the current outage, so that it is logged once and its end once.
    outage_since: Mutex<Option<Instant>>,
    last_error: Mutex<Option<String>>,
}

impl Deadlines for CachedValue {
    fn fresh_until(&self) -> Instant {
        self.fresh_until
    }

    fn stale_until(&self) -> Instant {
        self.stale_until
    }
}

impl ValueCache {
    pub(crate) fn new(max_entries: u64, cache_ttl: Duration, max_stale: Duration) -> ValueCache {
        ValueCache {
            fresh: Cache::builder()
                .max_capacity(max_entries)
                .expire_after(ExpireAt::Fresh)
                .build(),
            last_good: Cache::builder()
                .max_capacity(max_entries)
                .expire_after(ExpireAt::Stale)
                .build(),
            cache_ttl,
            max_stale,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            stale_served: AtomicU64::new(0),
            outage_since: Mutex::new(None),
            last_error: Mutex::new(None),
        }
    }

    /// Returns the cached entry for `key`, or calls `fetch` once for all concurrent callers of
    /// a missing entry and caches its result.
    pub(crate) async fn get_or_fetch<F, Fut>(
        &self,
        key: &str,
        fetch: F,
    ) -> Result<Arc<CachedValue>, HttpError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Fetched, HttpError>>,
    {
        if let Some(entry) = self.fresh.get(key).await {
            self.count_served(&entry, false);
            return Ok(entry);
        }
        let mut fetched = false;
        let result = self
            .fresh
            .try_get_with_by_ref(key, async {
                fetched = true;
                self.entry_for(key, fetch().await).await
            })
            .await;
        match result {
            Ok(entry) => {
                self.count_served(&entry, fetched);
                Ok(entry)
            }
            Err(err) => {
                if fetched {
                    self.misses.fetch_add(1, Ordering::Relaxed);
                    note_cache(CacheBackend::Http, CacheOutcome::Miss);
                }
                Err(HttpError::clone(&err))
            }
        }
    }

    /// Turns the result of one request into the entry to cache, or the error to return.
    async fn entry_for(
        &self,
        key: &str,
        result: Result<Fetched, HttpError>,
    ) -> Result<Arc<CachedValue>, HttpError> {
        let now = Instant::now();
        match result {
            Ok(fetched) => {
                self.note_available();
                let ttl = fetched
                    .ttl
                    .map_or(self.cache_ttl, |ttl| ttl.min(self.cache_ttl));
                let fresh_until = now + ttl;
                let entry = Arc::new(CachedValue {
                    value: fetched.value.map(Arc::new),
                    fresh_until,
                    stale_until: fresh_until + self.max_stale,
                    stale: false,
                });
                if entry.value.is_some() {
                    self.last_good
                        .insert(key.to_string(), Arc::clone(&entry))
                        .await;
                } else {
                    self.last_good.invalidate(key).await;
                }
                Ok(entry)
            }
            Err(err) if err.is_unavailable() => {
                self.note_unavailable(&err);
                self.record_error(&err);
                let Some(last) = self.last_good.get(key).await else {
                    return Err(err);
                };
                if last.stale_until <= now {
                    return Err(err);
                }
                let retry = self.cache_ttl.clamp(MIN_STALE_RETRY, MAX_STALE_RETRY);
                tracing::debug!(
                    key,
                    %err,
                    "serving the last good value during an HTTP secrets API outage"
                );
                Ok(Arc::new(CachedValue {
                    value: last.value.clone(),
                    fresh_until: (now + retry).min(last.stale_until),
                    stale_until: last.stale_until,
                    stale: true,
                }))
            }
            Err(err) => {
                // The API responded, so it is available, and its response reaches the caller.
                self.note_available();
                self.record_error(&err);
                self.last_good.invalidate(key).await;
                Err(err)
            }
        }
    }

    pub(crate) fn stats(&self) -> CacheStats {
        CacheStats {
            entries: self.fresh.entry_count(),
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            stale_served: self.stale_served.load(Ordering::Relaxed),
        }
    }

    /// Returns the message of the last failed request, or `None` when none failed.
    pub(crate) fn last_error(&self) -> Option<String> {
        lock(&self.last_error).clone()
    }

    /// Brings `entry_count` up to date; moka applies inserts and evictions in batches.
    pub(crate) async fn run_pending_tasks(&self) {
        self.fresh.run_pending_tasks().await;
        self.last_good.run_pending_tasks().await;
    }

    fn count_served(&self, entry: &CachedValue, fetched: bool) {
        let counter = if fetched { &self.misses } else { &self.hits };
        let outcome = if entry.stale {
            CacheOutcome::Stale
        } else if fetched {
            CacheOutcome::Miss
        } else {
            CacheOutcome::Hit
        };
        note_cache(CacheBackend::Http, outcome);
        counter.fetch_add(1, Ordering::Relaxed);
        if entry.stale {
            self.stale_served.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn record_error(&self, err: &HttpError) {
        *lock(&self.last_error) = Some(err.to_string());
    }

    fn note_unavailable(&self, err: &HttpError) {
        let mut since = lock(&self.outage_since);
        if since.is_none() {
            *since = Some(Instant::now());
            tracing::warn!(
                %err,
                max_stale_secs = self.max_stale.as_secs(),
                "the HTTP secrets API is unavailable; serving cached values up to max_stale past \
                 their TTL"
            );
        }
    }

    fn note_available(&self) {
        if let Some(since) = lock(&self.outage_since).take() {
            tracing::info!(
                outage_secs = since.elapsed().as_secs(),
                "the HTTP secrets API is available again"
            );
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Writers only replace whole values, so a poisoned lock still holds a usable state.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

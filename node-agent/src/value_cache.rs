//! The value cache of the Vault, HTTP and Kubernetes Secret backends: one entry per key.
//!
//! Two bounded `moka` caches work together. `fresh` keeps an entry until its TTL (the
//! configured `cache_ttl`, shortened by a TTL the source returns, or the whole duration of a
//! lease the source granted with the value) and provides single flight:
//! concurrent callers of a missing entry share one request through `try_get_with`. `last_good`
//! keeps each value for `max_stale` beyond its TTL. When a request fails because the source is
//! unavailable ([`SourceError::is_unavailable`]: unreachable, timed out, 429 or 5xx), that
//! value is served again, marked stale, and the source is retried after a short interval. A
//! "not found" is cached for the TTL and drops the `last_good` value, as does any other
//! failure (401, 403, an unusable body), which is returned to the caller and not cached.
//! A value under a lease is never kept in `last_good`, so it is never served past its lease
//! end.

use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moka::future::Cache;

use crate::admin::audit::{note_cache, CacheOutcome};
use crate::expiry::{Deadlines, ExpireAt};
use crate::metrics::CacheBackend;

/// An error of a backend's source, which tells the cache an outage from a response.
pub(crate) trait SourceError: Clone + fmt::Display + Send + Sync + 'static {
    /// Returns whether the source is unavailable for now, so a last good value may be served.
    fn is_unavailable(&self) -> bool;

    /// Returns whether the source rejected the agent's credentials as a whole (such as an
    /// HTTP 401), so that every request fails until they change.
    fn is_credential_rejection(&self) -> bool {
        false
    }
}

/// A successful read: the value, or `None` for "not found", and a TTL the source returned.
pub(crate) struct Fetched<V> {
    pub value: Option<V>,
    pub ttl: Option<Duration>,
    /// A lease granted with the value. The entry then stays fresh for the whole `ttl` (the
    /// lease's duration), even beyond `cache_ttl`, and ends with it.
    pub lease: Option<CachedLease>,
}

/// The lease of a cached value, such as that of a Vault dynamic secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CachedLease {
    pub id: String,
    pub renewable: bool,
}

/// Minimum and maximum pause between requests for one key while its stale value is served.
/// Within these bounds the pause equals the cache TTL.
const MIN_STALE_RETRY: Duration = Duration::from_secs(1);
const MAX_STALE_RETRY: Duration = Duration::from_secs(5);

/// One cached response.
pub(crate) struct CachedValue<V> {
    /// The value, or `None` when the source returned "not found".
    pub value: Option<Arc<V>>,
    /// Served without asking the source until then.
    pub fresh_until: Instant,
    /// Served while the source is unavailable until then.
    pub stale_until: Instant,
    /// The lease the value is valid under; the entry ends with it.
    pub lease: Option<CachedLease>,
    /// Set on an entry that serves a last good value during an outage.
    pub stale: bool,
    /// When the value was read from the source.
    pub fetched_at: Instant,
    /// Requests served from this entry without a read of the source.
    pub hits: AtomicU64,
}

/// One fresh cache entry as the admin API lists it, without its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EntryInfo {
    pub age: Duration,
    /// Time until the entry expires from the cache.
    pub ttl_left: Duration,
    /// Time until the lease of the value ends; `None` without a lease.
    pub lease_left: Option<Duration>,
    pub hits: u64,
    pub stale: bool,
    /// Set when the source returned "not found" and the entry caches that response.
    pub not_found: bool,
}

/// An outage of a backend's source: how long the source has been unavailable and the latest
/// error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outage {
    pub duration: Duration,
    /// The message of the latest failed request, which names the source's address.
    pub error: String,
}

/// Cache figures for the status report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CacheStats {
    pub entries: u64,
    pub hits: u64,
    pub misses: u64,
    pub stale_served: u64,
}

/// The cache of one backend, by key `K`, of values `V` and source errors `E`.
pub(crate) struct ValueCache<K, V, E> {
    fresh: Cache<K, Arc<CachedValue<V>>>,
    last_good: Cache<K, Arc<CachedValue<V>>>,
    /// The backend, for audit events, metrics and log lines.
    backend: CacheBackend,
    /// The source in words for log lines, such as "the HTTP secrets API".
    source: &'static str,
    cache_ttl: Duration,
    max_stale: Duration,
    hits: AtomicU64,
    misses: AtomicU64,
    stale_served: AtomicU64,
    /// Start of the current outage, so that it is logged once and its end once.
    outage_since: Mutex<Option<Instant>>,
    last_error: Mutex<Option<String>>,
    /// The message of the latest request whose credentials the source rejected, until a
    /// request with accepted credentials; logged once when it starts.
    credential_rejection: Mutex<Option<String>>,
    /// Whether requests use the agent's own credentials, so that their rejection is tracked.
    tracks_credentials: bool,
    _errors: std::marker::PhantomData<fn() -> E>,
}

impl<V> Deadlines for CachedValue<V> {
    fn fresh_until(&self) -> Instant {
        self.fresh_until
    }

    fn stale_until(&self) -> Instant {
        self.stale_until
    }
}

impl<K, V, E> ValueCache<K, V, E>
where
    K: Hash + Eq + Clone + fmt::Debug + Send + Sync + 'static,
    V: Send + Sync + 'static,
    E: SourceError,
{
    pub(crate) fn new(
        backend: CacheBackend,
        source: &'static str,
        max_entries: u64,
        cache_ttl: Duration,
        max_stale: Duration,
    ) -> ValueCache<K, V, E> {
        ValueCache {
            fresh: Cache::builder()
                .max_capacity(max_entries)
                .expire_after(ExpireAt::Fresh)
                .build(),
            last_good: Cache::builder()
                .max_capacity(max_entries)
                .expire_after(ExpireAt::Stale)
                .build(),
            backend,
            source,
            cache_ttl,
            max_stale,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            stale_served: AtomicU64::new(0),
            outage_since: Mutex::new(None),
            last_error: Mutex::new(None),
            credential_rejection: Mutex::new(None),
            tracks_credentials: true,
            _errors: std::marker::PhantomData,
        }
    }

    /// Stops tracking rejected credentials, for a source read with each caller's own
    /// credentials (node mode's pod tokens), where one caller's 401 says nothing of the others.
    pub(crate) fn without_credential_tracking(mut self) -> ValueCache<K, V, E> {
        self.tracks_credentials = false;
        self
    }

    /// Returns the cached entry for `key`, or calls `fetch` once for all concurrent callers of
    /// a missing entry and caches its result.
    pub(crate) async fn get_or_fetch<F, Fut>(
        &self,
        key: &K,
        fetch: F,
    ) -> Result<Arc<CachedValue<V>>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Fetched<V>, E>>,
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
                    note_cache(self.backend, CacheOutcome::Miss);
                }
                Err(E::clone(&err))
            }
        }
    }

    /// Stores a value the source pushed, such as a watch event, as a fresh entry of `key`.
    pub(crate) async fn insert(&self, key: K, fetched: Fetched<V>) {
        self.note_available();
        self.note_credentials_accepted();
        let entry = self.fresh_entry(fetched);
        self.remember_last_good(&key, &entry).await;
        self.fresh.insert(key, entry).await;
    }

    fn fresh_entry(&self, fetched: Fetched<V>) -> Arc<CachedValue<V>> {
        let now = Instant::now();
        let (fresh_until, stale_until) = match (&fetched.lease, fetched.ttl) {
            (Some(_), Some(duration)) => (now + duration, now + duration),
            _ => {
                let ttl = fetched
                    .ttl
                    .map_or(self.cache_ttl, |ttl| ttl.min(self.cache_ttl));
                (now + ttl, now + ttl + self.max_stale)
            }
        };
        Arc::new(CachedValue {
            value: fetched.value.map(Arc::new),
            fresh_until,
            stale_until,
            lease: fetched.lease,
            stale: false,
            fetched_at: now,
            hits: AtomicU64::new(0),
        })
    }

    async fn remember_last_good(&self, key: &K, entry: &Arc<CachedValue<V>>) {
        if entry.value.is_some() && entry.lease.is_none() {
            self.last_good.insert(key.clone(), Arc::clone(entry)).await;
        } else {
            self.last_good.invalidate(key).await;
        }
    }

    /// Turns the result of one request into the entry to cache, or the error to return.
    async fn entry_for(
        &self,
        key: &K,
        result: Result<Fetched<V>, E>,
    ) -> Result<Arc<CachedValue<V>>, E> {
        let now = Instant::now();
        match result {
            Ok(fetched) => {
                self.note_available();
                self.note_credentials_accepted();
                let entry = self.fresh_entry(fetched);
                self.remember_last_good(key, &entry).await;
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
                    ?key,
                    %err,
                    source = self.source,
                    "serving the last good value during an outage of the source"
                );
                Ok(Arc::new(CachedValue {
                    value: last.value.clone(),
                    fresh_until: (now + retry).min(last.stale_until),
                    stale_until: last.stale_until,
                    lease: None,
                    stale: true,
                    fetched_at: last.fetched_at,
                    hits: AtomicU64::new(0),
                }))
            }
            Err(err) => {
                // The source responded, so it is available, and its response reaches the caller.
                self.note_available();
                self.record_error(&err);
                if self.tracks_credentials {
                    if err.is_credential_rejection() {
                        self.note_credential_rejection(&err);
                    } else {
                        self.note_credentials_accepted();
                    }
                }
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

    /// Lists the fresh entries with their keys, without their values.
    pub(crate) fn entries(&self) -> Vec<(K, EntryInfo)> {
        let now = Instant::now();
        self.fresh
            .iter()
            .filter(|(_, entry)| entry.fresh_until > now)
            .map(|(key, entry)| {
                let info = EntryInfo {
                    age: now.saturating_duration_since(entry.fetched_at),
                    ttl_left: entry.fresh_until.saturating_duration_since(now),
                    lease_left: entry
                        .lease
                        .as_ref()
                        .map(|_| entry.stale_until.saturating_duration_since(now)),
                    hits: entry.hits.load(Ordering::Relaxed),
                    stale: entry.stale,
                    not_found: entry.value.is_none(),
                };
                (K::clone(&key), info)
            })
            .collect()
    }

    /// Extends the entry of `key` to `new_end` while it still holds lease `lease_id`. Returns
    /// whether it did.
    pub(crate) async fn extend_lease(&self, key: &K, lease_id: &str, new_end: Instant) -> bool {
        use moka::ops::compute::{CompResult, Op};
        let result = self
            .fresh
            .entry_by_ref(key)
            .and_compute_with(|current| {
                let op = match current {
                    Some(entry) if holds(entry.value(), lease_id) => {
                        let old = entry.value();
                        Op::Put(Arc::new(CachedValue {
                            value: old.value.clone(),
                            fresh_until: new_end,
                            stale_until: new_end,
                            lease: old.lease.clone(),
                            stale: false,
                            fetched_at: old.fetched_at,
                            hits: AtomicU64::new(old.hits.load(Ordering::Relaxed)),
                        }))
                    }
                    _ => Op::Nop,
                };
                std::future::ready(op)
            })
            .await;
        matches!(result, CompResult::ReplacedWith(_))
    }

    /// Returns whether the entry of `key` still holds lease `lease_id`.
    pub(crate) async fn holds_lease(&self, key: &K, lease_id: &str) -> bool {
        self.fresh
            .get(key)
            .await
            .is_some_and(|entry| holds(&entry, lease_id))
    }

    /// Returns the cached entry of `key` without counting a hit, or else the last good value
    /// kept for outages, for reports that must not wait. Walks the entries, so it suits a
    /// status request, not every read.
    pub(crate) fn peek(&self, key: &K) -> Option<Arc<CachedValue<V>>> {
        let find = |cache: &Cache<K, Arc<CachedValue<V>>>| {
            cache
                .iter()
                .find(|(cached, _)| **cached == *key)
                .map(|(_, entry)| entry)
        };
        find(&self.fresh).or_else(|| find(&self.last_good))
    }

    /// Returns the keys of the cached entries, including last good values kept for outages.
    pub(crate) fn keys(&self) -> Vec<K> {
        let mut keys: Vec<K> = self.fresh.iter().map(|(key, _)| K::clone(&key)).collect();
        for (key, _) in self.last_good.iter() {
            if !keys.contains(&*key) {
                keys.push(K::clone(&key));
            }
        }
        keys
    }

    /// Drops every entry whose key `matches`, including the last good value kept for outages,
    /// so the next request for it reads the source. Returns the keys dropped.
    ///
    /// NOTE: a request already in flight when this runs still caches its result.
    pub(crate) async fn invalidate_matching(&self, matches: impl Fn(&K) -> bool) -> Vec<K> {
        let mut keys = self.keys();
        keys.retain(|key| matches(key));
        for key in &keys {
            self.fresh.invalidate(key).await;
            self.last_good.invalidate(key).await;
        }
        self.run_pending_tasks().await;
        keys
    }

    /// Returns the current outage of the source, or `None` while the latest request reached it.
    pub(crate) fn outage(&self) -> Option<Outage> {
        let since = (*lock(&self.outage_since))?;
        Some(Outage {
            duration: since.elapsed(),
            error: self.last_error().unwrap_or_default(),
        })
    }

    /// Ends the current outage after a check outside the cache, such as a health probe,
    /// found the source available again.
    pub(crate) fn end_outage(&self) {
        self.note_available();
    }

    /// Returns the message of the latest request whose credentials the source rejected, or
    /// `None` when a later request (or none) found them accepted.
    pub(crate) fn credential_rejection(&self) -> Option<String> {
        lock(&self.credential_rejection).clone()
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

    fn count_served(&self, entry: &CachedValue<V>, fetched: bool) {
        let counter = if fetched {
            &self.misses
        } else {
            entry.hits.fetch_add(1, Ordering::Relaxed);
            &self.hits
        };
        let outcome = if entry.stale {
            CacheOutcome::Stale
        } else if fetched {
            CacheOutcome::Miss
        } else {
            CacheOutcome::Hit
        };
        note_cache(self.backend, outcome);
        counter.fetch_add(1, Ordering::Relaxed);
        if entry.stale {
            self.stale_served.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn record_error(&self, err: &E) {
        *lock(&self.last_error) = Some(err.to_string());
    }

    fn note_unavailable(&self, err: &E) {
        let mut since = lock(&self.outage_since);
        if since.is_some() {
            return;
        }
        *since = Some(Instant::now());
        if self.last_good.iter().next().is_some() {
            tracing::warn!(
                %err,
                max_stale_secs = self.max_stale.as_secs(),
                "{} is unavailable; serving cached values up to max_stale past their TTL",
                self.source
            );
        } else {
            tracing::warn!(
                %err,
                "{} is unavailable and no value is cached, so requests fail until it is back",
                self.source
            );
        }
    }

    fn note_credential_rejection(&self, err: &E) {
        let previous = lock(&self.credential_rejection).replace(err.to_string());
        if previous.is_none() {
            tracing::warn!(
                %err,
                "{} rejected the agent's credentials; its requests fail until they are fixed",
                self.source
            );
        }
    }

    fn note_credentials_accepted(&self) {
        if lock(&self.credential_rejection).take().is_some() {
            tracing::info!("{} accepts the agent's credentials again", self.source);
        }
    }

    fn note_available(&self) {
        if let Some(since) = lock(&self.outage_since).take() {
            tracing::info!(
                outage_secs = since.elapsed().as_secs(),
                "{} is available again",
                self.source
            );
        }
    }
}

fn holds<V>(entry: &CachedValue<V>, lease_id: &str) -> bool {
    entry
        .lease
        .as_ref()
        .is_some_and(|lease| lease.id == lease_id)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Writers only replace whole values, so a poisoned lock still holds a usable state.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

//! The secret cache: one entry per (identity, path, version) holding every key of one read.
//!
//! Two bounded `moka` caches work together. `fresh` holds entries until their cache TTL (or
//! lease end) and provides single flight: concurrent callers of a missing entry share one
//! fetch through `try_get_with`. `last_good` keeps the data of the last successful read of
//! each key for `max_stale` beyond its TTL. When a fetch fails because Vault is unavailable
//! (unreachable, timed out, sealed, 429 or 5xx), that data is served again, marked stale, and
//! Vault is retried after a short interval. Data under a lease is never kept in `last_good`,
//! so it is never served past its lease end. Any other failure (403, 404, a deleted or
//! destroyed version) drops the `last_good` entry and is returned to the caller.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moka::future::Cache;

use crate::expiry::{Deadlines, ExpireAt};

use super::error::VaultError;
use super::read::{ReadResult, ReadTarget, SecretData};
use crate::admin::audit::CacheOutcome;
use crate::metrics::CacheBackend;

/// Minimum and maximum pause between Vault attempts for one entry while its stale data is
/// served. Within these bounds the pause equals the cache TTL.
const MIN_STALE_RETRY: Duration = Duration::from_secs(1);
const MAX_STALE_RETRY: Duration = Duration::from_secs(5);

/// The key of one cached read.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct CacheKey {
    /// Identifies who read it (address, namespace, auth method and its parameters), so two
    /// identities never share data their policies may treat differently.
    pub identity: Arc<str>,
    pub target: ReadTarget,
}

/// The lease of a cached dynamic secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CachedLease {
    pub id: String,
    pub renewable: bool,
}

/// One cached read.
pub(crate) struct CachedSecret {
    pub data: Arc<SecretData>,
    /// Served without asking Vault until then.
    pub fresh_until: Instant,
    /// Served while Vault is unavailable until then.
    pub stale_until: Instant,
    pub lease: Option<CachedLease>,
    /// Set on an entry that re-serves last good data during an outage.
    pub stale: bool,
    /// When the data was read from Vault.
    pub fetched_at: Instant,
    /// Requests served from this entry without a Vault read.
    pub hits: AtomicU64,
}

/// One cache entry as the admin API lists it, without its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheEntryInfo {
    pub path: String,
    /// The KV v2 version the reference named; `None` for the latest version or non-KV reads.
    pub version: Option<u64>,
    pub age: Duration,
    /// Time until the entry expires from the cache.
    pub ttl_left: Duration,
    /// Time until the lease of a dynamic secret ends; `None` without a lease.
    pub lease_left: Option<Duration>,
    pub hits: u64,
    pub stale: bool,
}

/// One cached read that a flush dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlushedRead {
    pub path: String,
    /// The KV v2 version the reference named; `None` for the latest version or non-KV reads.
    pub version: Option<u64>,
}

/// Counters for the status report.
#[derive(Debug, Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    stale_served: AtomicU64,
}

/// Cache figures for the status report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CacheStats {
    pub entries: u64,
    pub hits: u64,
    pub misses: u64,
    pub stale_served: u64,
}

pub(crate) struct SecretCache {
    fresh: Cache<CacheKey, Arc<CachedSecret>>,
    last_good: Cache<CacheKey, Arc<CachedSecret>>,
    cache_ttl: Duration,
    max_stale: Duration,
    counters: Counters,
    /// Start of the current outage, so it is logged once and its end once.
    outage_since: Mutex<Option<Instant>>,
    last_error: Mutex<Option<String>>,
}

impl Deadlines for CachedSecret {
    fn fresh_until(&self) -> Instant {
        self.fresh_until
    }

    fn stale_until(&self) -> Instant {
        self.stale_until
    }
}

impl SecretCache {
    pub(crate) fn new(max_entries: u64, cache_ttl: Duration, max_stale: Duration) -> SecretCache {
        SecretCache {
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
            counters: Counters::default(),
            outage_since: Mutex::new(None),
            last_error: Mutex::new(None),
        }
    }

    /// Returns the cached entry for `key`, or calls `fetch` once for all concurrent callers
    /// of a missing entry and caches its result.
    pub(crate) async fn get_or_fetch<F, Fut>(
        &self,
        key: &CacheKey,
        fetch: F,
    ) -> Result<Arc<CachedSecret>, VaultError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<ReadResult, VaultError>>,
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
                self.fetch_entry(key, fetch().await).await
            })
            .await;
        match result {
            Ok(entry) => {
                self.count_served(&entry, fetched);
                Ok(entry)
            }
            Err(err) => {
                if fetched {
                    self.counters.misses.fetch_add(1, Ordering::Relaxed);
                    crate::admin::audit::note_cache(CacheBackend::Vault, CacheOutcome::Miss);
                }
                Err(VaultError::clone(&err))
            }
        }
    }

    /// Turns a fetch result into the entry to cache, falling back to the last good data when
    /// Vault is unavailable.
    async fn fetch_entry(
        &self,
        key: &CacheKey,
        result: Result<ReadResult, VaultError>,
    ) -> Result<Arc<CachedSecret>, VaultError> {
        let now = Instant::now();
        match result {
            Ok(read) => {
                self.note_vault_available();
                let entry = match read.lease {
                    Some(lease) => {
                        let end = now + lease.duration;
                        Arc::new(CachedSecret {
                            data: Arc::new(read.data),
                            fresh_until: end,
                            stale_until: end,
                            lease: Some(CachedLease {
                                id: lease.id,
                                renewable: lease.renewable,
                            }),
                            stale: false,
                            fetched_at: now,
                            hits: AtomicU64::new(0),
                        })
                    }
                    None => {
                        let fresh_until = now + self.cache_ttl;
                        let entry = Arc::new(CachedSecret {
                            data: Arc::new(read.data),
                            fresh_until,
                            stale_until: fresh_until + self.max_stale,
                            lease: None,
                            stale: false,
                            fetched_at: now,
                            hits: AtomicU64::new(0),
                        });
                        self.last_good.insert(key.clone(), Arc::clone(&entry)).await;
                        entry
                    }
                };
                Ok(entry)
            }
            Err(err) if err.is_unavailable() => {
                self.note_vault_unavailable(&err);
                self.record_error(&err);
                let Some(last) = self.last_good.get(key).await else {
                    return Err(err);
                };
                if last.stale_until <= now {
                    return Err(err);
                }
                let retry = self.cache_ttl.clamp(MIN_STALE_RETRY, MAX_STALE_RETRY);
                tracing::debug!(
                    path = %key.target,
                    %err,
                    "serving the last good value during a Vault outage"
                );
                Ok(Arc::new(CachedSecret {
                    data: Arc::clone(&last.data),
                    fresh_until: (now + retry).min(last.stale_until),
                    stale_until: last.stale_until,
                    lease: None,
                    stale: true,
                    fetched_at: last.fetched_at,
                    hits: AtomicU64::new(0),
                }))
            }
            Err(err) => {
                // Vault responded, so it is available, and its response must reach the caller.
                self.note_vault_available();
                self.record_error(&err);
                self.last_good.invalidate(key).await;
                Err(err)
            }
        }
    }

    /// Extends the entry of `key` to `new_end` while it still holds lease `lease_id`. Returns
    /// whether it did.
    pub(crate) async fn extend_lease(
        &self,
        key: &CacheKey,
        lease_id: &str,
        new_end: Instant,
    ) -> bool {
        use moka::ops::compute::Op;
        let result = self
            .fresh
            .entry_by_ref(key)
            .and_compute_with(|current| {
                let op = match current {
                    Some(entry)
                        if entry
                            .value()
                            .lease
                            .as_ref()
                            .is_some_and(|lease| lease.id == lease_id) =>
                    {
                        let old = entry.value();
                        Op::Put(Arc::new(CachedSecret {
                            data: Arc::clone(&old.data),
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
        matches!(result, moka::ops::compute::CompResult::ReplacedWith(_))
    }

    /// Returns whether the entry of `key` still holds lease `lease_id`.
    pub(crate) async fn holds_lease(&self, key: &CacheKey, lease_id: &str) -> bool {
        self.fresh.get(key).await.is_some_and(|entry| {
            entry
                .lease
                .as_ref()
                .is_some_and(|lease| lease.id == lease_id)
        })
    }

    pub(crate) fn stats(&self) -> CacheStats {
        CacheStats {
            entries: self.fresh.entry_count(),
            hits: self.counters.hits.load(Ordering::Relaxed),
            misses: self.counters.misses.load(Ordering::Relaxed),
            stale_served: self.counters.stale_served.load(Ordering::Relaxed),
        }
    }

    /// Lists the fresh entries, without their data.
    pub(crate) fn entries(&self) -> Vec<(CacheKey, CacheEntryInfo)> {
        let now = Instant::now();
        self.fresh
            .iter()
            .filter(|(_, entry)| entry.fresh_until > now)
            .map(|(key, entry)| {
                let info = CacheEntryInfo {
                    path: key.target.path.clone(),
                    version: key.target.version,
                    age: now.saturating_duration_since(entry.fetched_at),
                    ttl_left: entry.fresh_until.saturating_duration_since(now),
                    lease_left: entry
                        .lease
                        .as_ref()
                        .map(|_| entry.stale_until.saturating_duration_since(now)),
                    hits: entry.hits.load(Ordering::Relaxed),
                    stale: entry.stale,
                };
                (CacheKey::clone(&key), info)
            })
            .collect()
    }

    /// Drops every entry whose key `matches`, including the last good data kept for outages,
    /// so the next request for it reads Vault. Returns the keys dropped.
    ///
    /// NOTE: a read already in flight when this runs still caches its result.
    pub(crate) async fn invalidate_matching(
        &self,
        matches: impl Fn(&CacheKey) -> bool,
    ) -> Vec<CacheKey> {
        let mut keys: Vec<CacheKey> = self
            .fresh
            .iter()
            .map(|(key, _)| CacheKey::clone(&key))
            .filter(|key| matches(key))
            .collect();
        for (key, _) in self.last_good.iter() {
            if matches(&key) && !keys.contains(&*key) {
                keys.push(CacheKey::clone(&key));
            }
        }
        for key in &keys {
            self.fresh.invalidate(key).await;
            self.last_good.invalidate(key).await;
        }
        keys
    }

    /// Returns the last failure of a Vault read, or `None` when there was none.
    pub(crate) fn last_error(&self) -> Option<String> {
        lock(&self.last_error).clone()
    }

    /// Brings `entry_count` up to date; moka applies inserts and evictions in batches.
    pub(crate) async fn run_pending_tasks(&self) {
        self.fresh.run_pending_tasks().await;
        self.last_good.run_pending_tasks().await;
    }

    fn count_served(&self, entry: &CachedSecret, fetched: bool) {
        let counter = if fetched {
            &self.counters.misses
        } else {
            entry.hits.fetch_add(1, Ordering::Relaxed);
            &self.counters.hits
        };
        let outcome = if entry.stale {
            CacheOutcome::Stale
        } else if fetched {
            CacheOutcome::Miss
        } else {
            CacheOutcome::Hit
        };
        crate::admin::audit::note_cache(CacheBackend::Vault, outcome);
        counter.fetch_add(1, Ordering::Relaxed);
        if entry.stale {
            self.counters.stale_served.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn record_error(&self, err: &VaultError) {
        *lock(&self.last_error) = Some(err.to_string());
    }

    fn note_vault_unavailable(&self, err: &VaultError) {
        let mut since = lock(&self.outage_since);
        if since.is_none() {
            *since = Some(Instant::now());
            tracing::warn!(
                %err,
                max_stale_secs = self.max_stale.as_secs(),
                "Vault is unavailable; serving cached values up to max_stale past their TTL"
            );
        }
    }

    fn note_vault_available(&self) {
        if let Some(since) = lock(&self.outage_since).take() {
            tracing::info!(
                outage_secs = since.elapsed().as_secs(),
                "Vault is available again"
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

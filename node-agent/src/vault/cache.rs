//! The secret cache: one entry per (identity, path, version) holding every key of one read,
//! in the [`ValueCache`] that the other backends use too.
//!
//! An entry is fresh for the cache TTL, or until the end of the lease of a dynamic secret.
//! When a read fails because Vault is unavailable (unreachable, timed out, sealed, 429 or 5xx),
//! the data of the last successful read is served, marked stale, for up to `max_stale` past its
//! TTL; data under a lease never is. Any other failure (403, 404, a deleted or destroyed
//! version) drops that data and is returned to the caller.

use std::sync::Arc;
use std::time::Duration;

use super::error::VaultError;
use super::read::{ReadResult, ReadTarget, SecretData};
use crate::value_cache::{CachedLease, EntryInfo, Fetched, SourceError, ValueCache};

/// The key of one cached read.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct CacheKey {
    /// Identifies who read it (address, namespace, auth method and its parameters), so two
    /// identities never share data their policies may treat differently.
    pub identity: Arc<str>,
    pub target: ReadTarget,
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

/// The cache of one Vault backend.
pub(crate) type SecretCache = ValueCache<CacheKey, SecretData, VaultError>;

impl SourceError for VaultError {
    fn is_unavailable(&self) -> bool {
        VaultError::is_unavailable(self)
    }
}

impl From<ReadResult> for Fetched<SecretData> {
    fn from(read: ReadResult) -> Fetched<SecretData> {
        let (ttl, lease) = match read.lease {
            Some(grant) => (
                Some(grant.duration),
                Some(CachedLease {
                    id: grant.id,
                    renewable: grant.renewable,
                }),
            ),
            None => (None, None),
        };
        Fetched {
            value: Some(read.data),
            ttl,
            lease,
        }
    }
}

impl CacheEntryInfo {
    pub(crate) fn new(key: &CacheKey, info: EntryInfo) -> CacheEntryInfo {
        CacheEntryInfo {
            path: key.target.path.clone(),
            version: key.target.version,
            age: info.age,
            ttl_left: info.ttl_left,
            lease_left: info.lease_left,
            hits: info.hits,
            stale: info.stale,
        }
    }
}

//! The HTTP secrets backend (`[backend] type = "http"`): serves `envproxy:KEY` references and
//! bare names from an HTTP API, through a cache.
//!
//! Each key is read with `GET <url>/v1/env/<key>` and `Authorization: Bearer <token>`; the key
//! is one percent-encoded path segment. A 2xx response carries `{"key": "<key>", "value":
//! "<value>", "ttl": <seconds>}`, where `key` and `ttl` are optional. A `key` that differs from
//! the requested one is rejected, and a `ttl` shortens the cache lifetime of that value. A 404
//! means the key is not set. 401 and 403 are permission errors. 429, 5xx, timeouts and
//! connection failures are outages, during which a cached value is served up to `max_stale`
//! past its TTL. Redirects are not followed, so the token goes only to the configured host.
//!
//! # Layout
//!
//! - [`settings`]: the `[backend]` keys and their defaults.
//! - `client`: the request for a key and the decoding of its response.
//!
//! Values are cached in the agent's shared single-flight, size-bounded cache with
//! stale-if-error (`value_cache`).
//! - `error`: [`HttpError`].

mod client;
mod error;
pub mod settings;

use std::sync::Arc;

use envproxy_proto::SecretBytes;

pub use error::HttpError;
pub use settings::{AuthToken, HttpSettings};

pub(crate) use client::error_chain;
use client::Client;

use crate::metrics::{CacheBackend, Metrics};
use crate::value_cache::{EntryInfo, Outage, ValueCache};

/// The HTTP backend's part of the agent status. Contains no token and no value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpStatus {
    pub url: String,
    /// Source of the token: `auth_token` or `auth_token_file <path>`.
    pub auth: String,
    pub cache_entries: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub stale_served: u64,
    pub last_error: Option<String>,
}

/// An HTTP secrets backend. Clones share the client and the cache.
#[derive(Clone)]
pub struct HttpBackend {
    inner: Arc<Inner>,
}

struct Inner {
    settings: HttpSettings,
    client: Client,
    cache: ValueCache<String, SecretBytes, HttpError>,
    /// The agent's metrics, which count the requests sent to the API.
    metrics: Arc<Metrics>,
}

impl HttpBackend {
    /// Builds the backend for `settings`. Fails on an invalid URL or an unusable `ca_cert`; the
    /// API itself is first contacted at the first request.
    pub fn start(settings: HttpSettings) -> Result<HttpBackend, HttpError> {
        HttpBackend::start_observed(settings, Arc::default())
    }

    /// Like [`HttpBackend::start`], counting the requests sent to the API in `metrics`.
    pub(crate) fn start_observed(
        settings: HttpSettings,
        metrics: Arc<Metrics>,
    ) -> Result<HttpBackend, HttpError> {
        let client = Client::new(&settings)?;
        let cache = ValueCache::new(
            CacheBackend::Http,
            "the HTTP secrets API",
            settings.max_entries,
            settings.cache_ttl,
            settings.max_stale,
        );
        Ok(HttpBackend {
            inner: Arc::new(Inner {
                settings,
                client,
                cache,
                metrics,
            }),
        })
    }

    pub fn settings(&self) -> &HttpSettings {
        &self.inner.settings
    }

    /// Returns the value of `key`, or `None` when the API responded with 404.
    pub async fn get(&self, key: &str) -> Result<Option<SecretBytes>, HttpError> {
        let inner = &self.inner;
        let fetch = || async {
            let fetched = inner.client.fetch(key).await;
            inner.metrics.http_request();
            if let Err(err) = &fetched {
                inner.metrics.http_error(err.kind());
            }
            fetched
        };
        let entry = inner.cache.get_or_fetch(&key.to_string(), fetch).await?;
        Ok(entry
            .value
            .as_ref()
            .map(|value| SecretBytes::new(value.expose_secret().to_vec())))
    }

    pub fn status(&self) -> HttpStatus {
        let inner = &self.inner;
        let cache = inner.cache.stats();
        HttpStatus {
            url: inner.client.base_url().to_string(),
            auth: inner.settings.auth_token.describe(),
            cache_entries: cache.entries,
            cache_hits: cache.hits,
            cache_misses: cache.misses,
            stale_served: cache.stale_served,
            last_error: inner.cache.last_error(),
        }
    }

    /// Returns the current outage of the source, or `None` while the latest request reached
    /// it.
    pub fn outage(&self) -> Option<Outage> {
        self.inner.cache.outage()
    }

    /// Returns the error of the latest request whose credentials the source rejected (a 401),
    /// or `None` when a later request found them accepted.
    pub fn credential_rejection(&self) -> Option<String> {
        self.inner.cache.credential_rejection()
    }

    /// Lists the cached keys with their cache state, in no particular order, without their
    /// values.
    pub(crate) fn cache_entries(&self) -> Vec<(String, EntryInfo)> {
        self.inner.cache.entries()
    }

    /// Drops the cached values of the keys that `matches` accepts, so the next request for
    /// them reads the API. Returns the keys dropped, sorted.
    pub async fn flush(&self, matches: impl Fn(&str) -> bool) -> Vec<String> {
        let mut keys = self
            .inner
            .cache
            .invalidate_matching(|key| matches(key))
            .await;
        keys.sort();
        keys
    }

    /// Applies pending cache bookkeeping, so that `status` counts the current entries.
    pub async fn sync_cache(&self) {
        self.inner.cache.run_pending_tasks().await;
    }
}

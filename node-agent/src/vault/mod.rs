//! The Vault backend: resolves `vault:` references for one identity, through a cache.
//!
//! # Layout
//!
//! - [`settings`]: the `[vault]` settings and the Vault CLI's environment variables.
//! - [`auth`]: the [`Auth`] trait with static-token and Kubernetes logins.
//! - `session`: the current token of an identity, renewed or replaced before it expires.
//! - `transport`: HTTP with TLS settings, and Vault's error bodies turned into [`VaultError`].
//! - `read`: the request for a reference and the values of its response.
//! - `cache`: single-flight, size-bounded cache with stale-if-error.
//! - `lease`: renewal and revocation of dynamic secrets' leases.
//!
//! # vaultrs and the HTTP API
//!
//! Token lookup and renewal (`auth/token/lookup-self`, `renew-self`) and the Kubernetes login
//! go through vaultrs 0.8. Secret reads and lease calls go to the HTTP API directly, because
//! vaultrs 0.8 falls short there in three ways. It has no call for `sys/leases/renew`. Its
//! dynamic secret reads drop `lease_id`. On a KV v2 404 it returns only the `errors` list, so
//! `deletion_time` and `destroyed` are lost and a deleted version looks like a missing path.

pub mod auth;
mod cache;
mod error;
mod lease;
mod read;
mod secret;
mod session;
pub mod settings;
mod transport;

use std::sync::Arc;
use std::time::Duration;

use envproxy_proto::{Reference, SecretBytes};
use tracing::Instrument;

pub use auth::{Auth, JwtFile, JwtSource, KubernetesAuth, TokenAuth};
pub use cache::{CacheEntryInfo, FlushedRead};
pub use error::VaultError;
pub use secret::SecretText;
pub use settings::{AuthSettings, TlsSettings, TokenSource, VaultEnvironment, VaultSettings};
pub use transport::Transport;

use cache::{CacheKey, SecretCache};
use lease::LeaseKeeper;
use read::{ReadResult, ReadTarget};
use session::Session;

use crate::metrics::{CacheBackend, Metrics, VaultOperation};
use crate::value_cache::Fetched;
pub use crate::value_cache::Outage;

/// The Vault part of the agent status. Contains no token and no value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultStatus {
    pub address: String,
    pub namespace: Option<String>,
    pub auth_method: String,
    /// Seconds until the token expires; `None` before the first login or for a token without
    /// expiry.
    pub token_ttl_secs: Option<u64>,
    pub token_renewable: bool,
    pub logged_in: bool,
    pub cache_entries: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub stale_served: u64,
    pub live_leases: usize,
    pub last_error: Option<String>,
}

/// A Vault backend for one identity. Clones share the cache, token and leases.
#[derive(Clone)]
pub struct VaultBackend {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    settings: VaultSettings,
    transport: Arc<Transport>,
    session: Arc<Session>,
    /// Cache key part naming this identity.
    identity: Arc<str>,
    cache: SecretCache,
    /// Reads for which Vault returned "not found" or "permission denied", kept for
    /// [`refused_read_ttl`] so that a program repeating such a read makes a bounded number of
    /// Vault reads.
    refused_reads: moka::future::Cache<CacheKey, VaultError>,
    leases: LeaseKeeper,
}

/// Maximum time a "not found" or "permission denied" read stays cached. It is short because a
/// secret written or a policy granted after such a read should take effect quickly.
const MAX_REFUSED_READ_TTL: Duration = Duration::from_secs(5);

/// Returns how long a refused read stays cached: the cache TTL, at most
/// [`MAX_REFUSED_READ_TTL`].
fn refused_read_ttl(cache_ttl: Duration) -> Duration {
    cache_ttl.min(MAX_REFUSED_READ_TTL)
}

/// Returns whether `err` is Vault's response about the path itself, which a repeated read
/// within a few seconds would get again: not found, or permission denied.
fn is_refused_read(err: &VaultError) -> bool {
    matches!(
        err,
        VaultError::NotFound { .. }
            | VaultError::VersionNotFound { .. }
            | VaultError::PermissionDenied { .. }
    )
}

impl VaultBackend {
    /// Builds the backend for `settings` with the auth method they name, and logs in.
    ///
    /// Fails on an invalid address or unreadable TLS files. A failed login is logged and
    /// retried at the first request, so an agent can start while Vault is down.
    pub async fn start(settings: VaultSettings) -> Result<VaultBackend, VaultError> {
        let auth = auth::from_settings(&settings.auth);
        VaultBackend::start_with_auth(settings, auth).await
    }

    /// Like [`VaultBackend::start`] with an auth method the caller supplies, such as a
    /// [`KubernetesAuth`] whose JWT comes from elsewhere than a file.
    pub async fn start_with_auth(
        settings: VaultSettings,
        auth: Arc<dyn Auth>,
    ) -> Result<VaultBackend, VaultError> {
        VaultBackend::start_observed(settings, auth, Arc::default()).await
    }

    /// Like [`VaultBackend::start_with_auth`], counting Vault requests in `metrics`. Log lines
    /// name the identity as the auth method and Vault address.
    pub(crate) async fn start_observed(
        settings: VaultSettings,
        auth: Arc<dyn Auth>,
        metrics: Arc<Metrics>,
    ) -> Result<VaultBackend, VaultError> {
        let identity = format!("{} auth at {}", auth.method(), settings.address);
        VaultBackend::start_named(settings, auth, metrics, identity).await
    }

    /// Like [`VaultBackend::start_observed`], with `identity` naming the login in log lines,
    /// such as node mode's service account, role, auth mount and address.
    pub(crate) async fn start_named(
        settings: VaultSettings,
        auth: Arc<dyn Auth>,
        metrics: Arc<Metrics>,
        identity: String,
    ) -> Result<VaultBackend, VaultError> {
        let transport = Arc::new(Transport::new(&settings, metrics)?);
        let cache_identity: Arc<str> = format!(
            "{}|{}|{}|{}",
            transport.address(),
            settings.namespace().unwrap_or_default(),
            auth.method(),
            auth.describe()
        )
        .into();
        let session = Session::new(auth, Arc::clone(&transport), identity.into());
        let backend = VaultBackend {
            inner: Arc::new(Inner {
                // NOTE: each backend has its own cache. The key already names the identity, so
                // node mode can share one cache among per-pod identities of the same role.
                cache: SecretCache::new(
                    CacheBackend::Vault,
                    "Vault",
                    settings.max_entries,
                    settings.cache_ttl,
                    settings.max_stale,
                ),
                refused_reads: moka::future::Cache::builder()
                    .max_capacity(settings.max_entries)
                    .time_to_live(
                        refused_read_ttl(settings.cache_ttl).max(Duration::from_millis(1)),
                    )
                    .build(),
                settings,
                transport,
                session,
                identity: cache_identity,
                leases: LeaseKeeper::default(),
            }),
        };
        let inner = &backend.inner;
        match inner.session.login().await {
            Ok(()) => {}
            Err(err) if err.is_unavailable() => tracing::warn!(
                identity = inner.session.identity(),
                %err,
                "Vault is unavailable at the first login of this identity; logging in again at \
                 its next request"
            ),
            // The session logged the refusal with its backoff pause.
            Err(VaultError::LoginFailed { .. }) => {}
            Err(err) => tracing::error!(
                identity = inner.session.identity(),
                method = inner.session.auth().method(),
                %err,
                "Vault login failed; vault: references of this identity fail until a login \
                 succeeds at one of its later requests"
            ),
        }
        Ok(backend)
    }

    pub fn settings(&self) -> &VaultSettings {
        &self.inner.settings
    }

    /// Returns the value of a `vault:` reference. Fails for a reference of another scheme.
    pub async fn resolve(&self, reference: &Reference) -> Result<SecretBytes, VaultError> {
        self.resolve_in(reference, tracing::Span::none).await
    }

    /// Resolves `reference` as [`resolve`](Self::resolve) does. A read from Vault (not a cache
    /// hit) runs in the span that `read_span` returns, so the log lines of a login it triggers
    /// name its cause. A cache hit creates no span.
    pub async fn resolve_in(
        &self,
        reference: &Reference,
        read_span: impl FnOnce() -> tracing::Span,
    ) -> Result<SecretBytes, VaultError> {
        let (target, key) = match reference {
            Reference::VaultKv2 { version, key, .. } => (
                ReadTarget {
                    path: reference.vault_path().unwrap_or_default(),
                    version: *version,
                    kv2: true,
                },
                key,
            ),
            Reference::Vault { path, key } => (
                ReadTarget {
                    path: path.clone(),
                    version: None,
                    kv2: false,
                },
                key,
            ),
            Reference::Local { key } => {
                return Err(VaultError::KeyNotFound {
                    path: "envproxy:".to_string(),
                    key: key.clone(),
                })
            }
            Reference::Kubernetes { key, .. } => {
                return Err(VaultError::KeyNotFound {
                    path: "k8s:".to_string(),
                    key: key.clone(),
                })
            }
        };
        let cache_key = CacheKey {
            identity: Arc::clone(&self.inner.identity),
            target,
        };
        if let Some(err) = self.inner.refused_reads.get(&cache_key).await {
            return Err(err);
        }
        let entry = self
            .inner
            .cache
            .get_or_fetch(&cache_key, || {
                async { self.fetch(&cache_key).await.map(Fetched::from) }.instrument(read_span())
            })
            .await;
        let entry = match entry {
            Ok(entry) => entry,
            Err(err) => {
                if is_refused_read(&err)
                    && !refused_read_ttl(self.inner.settings.cache_ttl).is_zero()
                {
                    self.inner
                        .refused_reads
                        .insert(cache_key, err.clone())
                        .await;
                }
                return Err(err);
            }
        };
        // A Vault read always has data: only the other backends cache "not found".
        match entry.value.as_ref().and_then(|data| data.get(key)) {
            Some(value) => Ok(SecretBytes::new(value.expose_secret().to_vec())),
            None => Err(VaultError::KeyNotFound {
                path: cache_key.target.path.clone(),
                key: key.clone(),
            }),
        }
    }

    /// Reads from Vault, logging in again once if the auth method can and Vault rejected the
    /// token. A lease in the response is tracked from here on.
    async fn fetch(&self, key: &CacheKey) -> Result<ReadResult, VaultError> {
        let inner = &self.inner;
        let token = inner
            .session
            .token()
            .await
            .map_err(|err| err.while_reading(&key.target.path))?;
        let result = read::read(&inner.transport, &token, &key.target).await;
        inner.transport.count(VaultOperation::Read, &result);
        let result = match result {
            Err(err) if err.is_auth_rejection() => {
                match inner.session.login_after_rejection(&token, &err).await? {
                    Some(new_token) => {
                        let again = read::read(&inner.transport, &new_token, &key.target).await;
                        inner.transport.count(VaultOperation::Read, &again);
                        again
                    }
                    None => Err(err),
                }
            }
            other => other,
        };
        if let Ok(ReadResult {
            lease: Some(lease), ..
        }) = &result
        {
            inner.leases.track(inner, key.clone(), lease.clone());
        }
        result
    }

    pub fn status(&self) -> VaultStatus {
        let inner = &self.inner;
        let token = inner.session.status();
        let cache = inner.cache.stats();
        VaultStatus {
            address: inner.settings.address.clone(),
            namespace: inner.settings.namespace().map(str::to_string),
            auth_method: inner.session.auth().method().to_string(),
            token_ttl_secs: token.ttl_secs,
            token_renewable: token.renewable,
            logged_in: token.logged_in,
            cache_entries: cache.entries,
            cache_hits: cache.hits,
            cache_misses: cache.misses,
            stale_served: cache.stale_served,
            live_leases: inner.leases.live_count(),
            // A failed login explains every later failure until a login succeeds.
            last_error: inner
                .session
                .login_error()
                .or_else(|| inner.cache.last_error()),
        }
    }

    /// Returns the start of the current Vault outage and the error that began it, or `None`
    /// while the latest request reached Vault. Requests and [`VaultBackend::probe`] update it.
    pub fn outage(&self) -> Option<Outage> {
        self.inner.cache.outage()
    }

    /// Asks Vault's `sys/health` whether it is up, unsealed and able to serve (standbys
    /// count as able), and ends the current outage when it is. The request needs no token.
    pub async fn probe(&self) -> Result<(), VaultError> {
        let reply = self
            .inner
            .transport
            .send(
                reqwest::Method::GET,
                "sys/health",
                Some("standbyok=true&perfstandbyok=true"),
                None,
                None,
                false,
            )
            .await;
        match reply {
            Ok(_) => {
                self.inner.cache.end_outage();
                Ok(())
            }
            Err(err) => Err(err),
        }
    }

    /// Returns whether no token is in use because the latest login found Vault unavailable,
    /// as when Vault was down when the agent started.
    pub(crate) fn login_found_unavailable(&self) -> bool {
        self.inner.session.login_found_unavailable()
    }

    /// Logs in now, as a health probe does once Vault is back after a failed login.
    pub(crate) async fn login(&self) -> Result<(), VaultError> {
        self.inner.session.login().await
    }

    /// Lists the cached reads of this identity, without their data.
    pub fn cache_entries(&self) -> Vec<CacheEntryInfo> {
        let mut entries: Vec<CacheEntryInfo> = self
            .inner
            .cache
            .entries()
            .into_iter()
            .map(|(key, info)| CacheEntryInfo::new(&key, info))
            .collect();
        entries.sort_by(|a, b| (&a.path, a.version).cmp(&(&b.path, b.version)));
        entries
    }

    /// Drops the cached reads whose Vault path starts with `path_prefix` (every read for an
    /// empty prefix), so the next request for them reads Vault. Returns the dropped reads,
    /// sorted by path and version.
    pub async fn flush(&self, path_prefix: &str) -> Vec<FlushedRead> {
        let keys = self
            .inner
            .cache
            .invalidate_matching(|key| key.target.path.starts_with(path_prefix))
            .await;
        // Refused reads are few and short-lived, so a flush drops all of them.
        self.inner.refused_reads.invalidate_all();
        self.inner.cache.run_pending_tasks().await;
        let mut flushed: Vec<FlushedRead> = keys
            .into_iter()
            .map(|key| FlushedRead {
                path: key.target.path,
                version: key.target.version,
            })
            .collect();
        flushed.sort_by(|a, b| (&a.path, a.version).cmp(&(&b.path, b.version)));
        flushed
    }

    /// Applies pending cache bookkeeping, so that `status` counts the current entries.
    pub async fn sync_cache(&self) {
        self.inner.cache.run_pending_tasks().await;
    }

    /// Stops renewals and, when `revoke_on_shutdown` is set, revokes every live lease.
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        let lease_ids = inner.leases.stop_all();
        if inner.settings.revoke_on_shutdown {
            let revoked = lease::revoke_all(inner, &lease_ids).await;
            tracing::info!(
                revoked,
                leases = lease_ids.len(),
                "revoked leases at shutdown"
            );
        }
        inner.session.stop();
    }
}

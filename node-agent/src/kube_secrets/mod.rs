//! The Kubernetes Secret backend: `k8s:[<namespace>/]<secret>#<key>` references and, with
//! `[backend] type = "kubernetes"`, `envproxy:KEY` references and bare names from one Secret.
//!
//! Each read is `GET /api/v1/namespaces/<namespace>/secrets/<name>`, and the Secret's whole
//! `data` is cached, so every key of one Secret costs one read. In local mode the read uses
//! the user's kubeconfig credentials. In node mode it uses the calling pod's own service
//! account token as the bearer token, so Kubernetes RBAC decides what each pod may read. The
//! cache is kept per (service account, namespace, Secret), so the pods of one Deployment share
//! their reads. The default backend's Secret is also watched, so an edit replaces the
//! cached data at once.
//!
//! A 404 is "not found", 401 and 403 are reported as permission errors, and 429, 5xx,
//! timeouts and connection failures are outages, during which cached data is served up to
//! `max_stale` past its TTL (see `value_cache`).
//!
//! # Layout
//!
//! - [`settings`]: the `[backend]` keys and their defaults.
//! - `client`: the kube client, its identity and one read of a Secret.
//! - `watch`: the watch of the default backend's Secret.
//! - `error`: [`KubeSecretError`].

mod client;
mod error;
pub mod settings;
mod watch;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use envproxy_proto::SecretBytes;
use tokio::sync::OnceCell;
use tokio::task::JoinHandle;

pub use error::KubeSecretError;
pub use settings::KubeSettings;

use client::Connection;

use crate::metrics::{CacheBackend, Metrics};
use crate::value_cache::{EntryInfo, Outage, ValueCache};
use crate::vault::SecretText;

/// Cache key of one Secret read: who read it and which Secret.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct SecretKey {
    /// `kubeconfig` in local mode, `system:serviceaccount:<ns>:<name>` in node mode.
    identity: Arc<str>,
    namespace: String,
    name: String,
}

/// One cached Secret read, as [`KubeSecrets::flush`] shows it to its filter.
pub struct CachedSecret<'a> {
    /// `kubeconfig` in local mode, `system:serviceaccount:<ns>:<name>` in node mode.
    pub identity: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
}

/// A Secret read that a flush dropped from the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlushedSecret {
    /// As in [`CachedSecret::identity`].
    pub identity: String,
    pub namespace: String,
    pub name: String,
}

/// One cached Secret read with its cache state, as the admin API lists it, without its data.
pub(crate) struct SecretEntry {
    /// As in [`CachedSecret::identity`].
    pub identity: String,
    pub namespace: String,
    pub name: String,
    pub info: EntryInfo,
}

/// The `data` of one Secret: key names and their decoded values.
pub(crate) struct SecretData(BTreeMap<String, SecretBytes>);

/// A service account token of a calling pod, checked against the pod, and the service
/// account it names.
pub struct PodBearer {
    /// `system:serviceaccount:<namespace>:<name>`.
    pub identity: String,
    /// The pod's namespace, the default of references without one.
    pub namespace: String,
    pub token: SecretText,
}

/// The Kubernetes Secret backend's part of the agent status. Contains no token and no value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeStatus {
    /// The API server's URL, or `None` before the client is set up.
    pub server: Option<String>,
    /// Whose credentials reads use: `kubeconfig` or `calling pod`.
    pub credentials: &'static str,
    /// `namespace/name` of the default backend's Secret.
    pub default_secret: Option<String>,
    /// Whether the watch of the default Secret has delivered its first list.
    pub watch_synced: bool,
    pub cache_entries: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub stale_served: u64,
    pub last_error: Option<String>,
}

/// Source of a read's credentials.
enum Credentials {
    /// The kubeconfig's user, built at the first read (or at start for a default Secret).
    Kubeconfig,
    /// A bearer token per read, on a client without credentials of its own.
    PodTokens,
}

/// A Kubernetes Secret backend. Clones share the client and the cache.
#[derive(Clone)]
pub struct KubeSecrets {
    inner: Arc<Inner>,
}

struct Inner {
    settings: KubeSettings,
    credentials: Credentials,
    connection: OnceCell<Connection>,
    /// Why the client could not be built at the latest attempt; it is tried again at the next
    /// read, so a kubeconfig created later is picked up without a restart.
    client_error: Mutex<Option<KubeSecretError>>,
    cache: ValueCache<SecretKey, SecretData, KubeSecretError>,
    metrics: Arc<Metrics>,
    watch: Mutex<Option<JoinHandle<()>>>,
    watch_synced: AtomicBool,
}

impl KubeSecrets {
    /// Returns a backend that reads with the user's kubeconfig. The client is built at the
    /// first read, so an agent without a kubeconfig starts and reports the error only for
    /// `k8s:` references.
    pub(crate) fn with_kubeconfig(settings: KubeSettings, metrics: Arc<Metrics>) -> KubeSecrets {
        KubeSecrets::new(settings, Credentials::Kubeconfig, OnceCell::new(), metrics)
    }

    /// Returns a backend that reads with the calling pods' tokens, through the API server of
    /// `config`. The credentials in `config` (the agent's own) are never used for Secrets.
    pub(crate) fn for_pods(
        config: kube::Config,
        settings: KubeSettings,
        metrics: Arc<Metrics>,
    ) -> Result<KubeSecrets, KubeSecretError> {
        let connection = Connection::without_credentials(config)?;
        let cell = OnceCell::new_with(Some(connection));
        Ok(KubeSecrets::new(
            settings,
            Credentials::PodTokens,
            cell,
            metrics,
        ))
    }

    fn new(
        settings: KubeSettings,
        credentials: Credentials,
        connection: OnceCell<Connection>,
        metrics: Arc<Metrics>,
    ) -> KubeSecrets {
        let cache = ValueCache::new(
            CacheBackend::Kubernetes,
            "the Kubernetes API server",
            settings.max_entries,
            settings.cache_ttl,
            settings.max_stale,
        );
        let cache = match credentials {
            Credentials::Kubeconfig => cache,
            Credentials::PodTokens => cache.without_credential_tracking(),
        };
        KubeSecrets {
            inner: Arc::new(Inner {
                settings,
                credentials,
                connection,
                client_error: Mutex::new(None),
                cache,
                metrics,
                watch: Mutex::new(None),
                watch_synced: AtomicBool::new(false),
            }),
        }
    }

    pub fn settings(&self) -> &KubeSettings {
        &self.inner.settings
    }

    /// Returns whether `envproxy:KEY` references and bare names are served from a Secret.
    pub fn has_default_secret(&self) -> bool {
        self.inner.settings.secret_name.is_some()
    }

    /// Builds the client now and starts the watch of the default Secret, so that a broken
    /// kubeconfig stops the agent at start rather than at the first read.
    pub(crate) async fn start_default_watch(&self) -> Result<(), KubeSecretError> {
        let connection = self.connection().await?;
        let Some(name) = self.inner.settings.secret_name.clone() else {
            return Ok(());
        };
        let namespace = self.default_namespace(connection);
        let target = watch::WatchTarget {
            server: connection.server.clone(),
            namespace,
            name,
        };
        let task = watch::spawn(self.clone(), connection.client.clone(), target);
        *lock(&self.inner.watch) = Some(task);
        Ok(())
    }

    /// Stops the watch of the default Secret.
    pub(crate) fn stop(&self) {
        if let Some(task) = lock(&self.inner.watch).take() {
            task.abort();
        }
    }

    /// Returns key `key` of the default Secret, or `None` when the Secret has no such key.
    pub async fn default_value(&self, key: &str) -> Result<Option<SecretBytes>, KubeSecretError> {
        let connection = self.connection().await?;
        let Some(name) = self.inner.settings.secret_name.as_deref() else {
            return Err(KubeSecretError::Client {
                reason: "no default Secret is configured ([backend] secret_name)".to_string(),
            });
        };
        let namespace = self.default_namespace(connection);
        match self.read(connection, None, &namespace, name, key).await {
            Ok(value) => Ok(Some(value)),
            Err(KubeSecretError::KeyNotFound { .. }) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Returns key `key` of Secret `namespace/name` (`namespace` `None`: the kubeconfig
    /// context's), read with the kubeconfig's credentials.
    pub async fn value(
        &self,
        namespace: Option<&str>,
        name: &str,
        key: &str,
    ) -> Result<SecretBytes, KubeSecretError> {
        let connection = self.connection().await?;
        let namespace = match namespace {
            Some(namespace) => namespace.to_string(),
            None => connection.default_namespace.clone(),
        };
        self.read(connection, None, &namespace, name, key).await
    }

    /// Returns key `key` of Secret `namespace/name` (`namespace` `None`: the pod's own), read
    /// as the pod that presented `bearer`.
    pub async fn value_as(
        &self,
        bearer: &PodBearer,
        namespace: Option<&str>,
        name: &str,
        key: &str,
    ) -> Result<SecretBytes, KubeSecretError> {
        let connection = self.connection().await?;
        let namespace = namespace.unwrap_or(&bearer.namespace);
        self.read(connection, Some(bearer), namespace, name, key)
            .await
    }

    /// Returns the key names of the default Secret, sorted, reading it through the cache when
    /// its watch has not delivered it yet.
    pub async fn default_key_names(&self) -> Result<Vec<String>, KubeSecretError> {
        let connection = self.connection().await?;
        let Some(name) = self.inner.settings.secret_name.as_deref() else {
            return Err(KubeSecretError::Client {
                reason: "no default Secret is configured ([backend] secret_name)".to_string(),
            });
        };
        let namespace = self.default_namespace(connection);
        let data = self.read_secret(connection, None, &namespace, name).await?;
        Ok(data.0.keys().cloned().collect())
    }

    /// Returns the key names of the default Secret, sorted, when its data is cached; `None`
    /// before the first read or watch event, or while the Secret does not exist. Sends no
    /// request, so a status request never waits for the API server.
    pub fn cached_default_key_names(&self) -> Option<Vec<String>> {
        let connection = self.inner.connection.get()?;
        let name = self.inner.settings.secret_name.as_ref()?;
        let key = SecretKey {
            identity: Arc::clone(&connection.identity),
            namespace: self.default_namespace(connection),
            name: name.clone(),
        };
        let entry = self.inner.cache.peek(&key)?;
        let data = entry.value.as_ref()?;
        Some(data.0.keys().cloned().collect())
    }

    /// Reads one key through the cache.
    async fn read(
        &self,
        connection: &Connection,
        bearer: Option<&PodBearer>,
        namespace: &str,
        name: &str,
        key: &str,
    ) -> Result<SecretBytes, KubeSecretError> {
        let data = self
            .read_secret(connection, bearer, namespace, name)
            .await?;
        match data.0.get(key) {
            Some(value) => Ok(SecretBytes::new(value.expose_secret().to_vec())),
            None => Err(KubeSecretError::KeyNotFound {
                namespace: namespace.to_string(),
                secret: name.to_string(),
                key: key.to_string(),
            }),
        }
    }

    /// Reads Secret `namespace/name` through the cache.
    async fn read_secret(
        &self,
        connection: &Connection,
        bearer: Option<&PodBearer>,
        namespace: &str,
        name: &str,
    ) -> Result<Arc<SecretData>, KubeSecretError> {
        let identity: Arc<str> = match bearer {
            Some(bearer) => Arc::from(bearer.identity.as_str()),
            None => Arc::clone(&connection.identity),
        };
        let cache_key = SecretKey {
            identity: Arc::clone(&identity),
            namespace: namespace.to_string(),
            name: name.to_string(),
        };
        let inner = &self.inner;
        let fetch = || async {
            let token = bearer.map(|bearer| &bearer.token);
            let shown_identity = match bearer {
                Some(bearer) => bearer.identity.as_str(),
                None => connection.user.as_str(),
            };
            let read = client::Read {
                identity: shown_identity,
                namespace,
                name,
                timeout: inner.settings.timeout,
            };
            let fetched = connection.fetch(&read, token).await;
            inner.metrics.kube_request();
            if let Err(err) = &fetched {
                inner.metrics.kube_error(err.kind());
            }
            fetched
        };
        let entry = inner.cache.get_or_fetch(&cache_key, fetch).await?;
        entry
            .value
            .clone()
            .ok_or_else(|| KubeSecretError::SecretNotFound {
                namespace: namespace.to_string(),
                secret: name.to_string(),
            })
    }

    pub fn status(&self) -> KubeStatus {
        let inner = &self.inner;
        let connection = inner.connection.get();
        let cache = inner.cache.stats();
        let default_secret = inner.settings.secret_name.as_ref().map(|name| {
            let namespace = match connection {
                Some(connection) => self.default_namespace(connection),
                None => inner.settings.namespace.clone().unwrap_or_default(),
            };
            format!("{namespace}/{name}")
        });
        let client_error = lock(&inner.client_error).as_ref().map(ToString::to_string);
        let last_error = client_error.or_else(|| inner.cache.last_error());
        KubeStatus {
            server: connection.map(|connection| connection.server.clone()),
            credentials: match inner.credentials {
                Credentials::Kubeconfig => "kubeconfig",
                Credentials::PodTokens => "calling pod",
            },
            default_secret,
            watch_synced: inner.watch_synced.load(Ordering::Relaxed),
            cache_entries: cache.entries,
            cache_hits: cache.hits,
            cache_misses: cache.misses,
            stale_served: cache.stale_served,
            last_error,
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

    /// Returns the identities that cached Secret reads belong to, sorted.
    pub fn cached_identities(&self) -> Vec<String> {
        let mut identities: Vec<String> = self
            .inner
            .cache
            .keys()
            .into_iter()
            .map(|key| key.identity.to_string())
            .collect();
        identities.sort();
        identities.dedup();
        identities
    }

    /// Lists the cached Secret reads, in no particular order, without their data.
    pub(crate) fn cache_entries(&self) -> Vec<SecretEntry> {
        let entries = self.inner.cache.entries().into_iter();
        entries
            .map(|(key, info)| SecretEntry {
                identity: key.identity.to_string(),
                namespace: key.namespace,
                name: key.name,
                info,
            })
            .collect()
    }

    /// Drops the cached Secrets that `matches` accepts, so the next request for them reads
    /// the API server. Returns the Secrets dropped, sorted by identity, namespace and name.
    pub async fn flush(&self, matches: impl Fn(&CachedSecret<'_>) -> bool) -> Vec<FlushedSecret> {
        let keys = self
            .inner
            .cache
            .invalidate_matching(|key| {
                matches(&CachedSecret {
                    identity: &key.identity,
                    namespace: &key.namespace,
                    name: &key.name,
                })
            })
            .await;
        let mut flushed: Vec<FlushedSecret> = keys
            .into_iter()
            .map(|key| FlushedSecret {
                identity: key.identity.to_string(),
                namespace: key.namespace,
                name: key.name,
            })
            .collect();
        flushed.sort_by(|a, b| {
            (&a.identity, &a.namespace, &a.name).cmp(&(&b.identity, &b.namespace, &b.name))
        });
        flushed
    }

    /// Applies pending cache bookkeeping, so that `status` counts the current entries.
    pub async fn sync_cache(&self) {
        self.inner.cache.run_pending_tasks().await;
    }

    /// Returns the client, building it from the kubeconfig at the first call in local mode.
    /// A failed build is tried again at the next call.
    async fn connection(&self) -> Result<&Connection, KubeSecretError> {
        let inner = &self.inner;
        let built = inner
            .connection
            .get_or_try_init(|| Connection::from_kubeconfig(&inner.settings))
            .await;
        *lock(&inner.client_error) = built.as_ref().err().cloned();
        built
    }

    /// Returns the namespace of the default Secret: `namespace` from the settings, else the
    /// kubeconfig context's.
    fn default_namespace(&self, connection: &Connection) -> String {
        self.inner
            .settings
            .namespace
            .clone()
            .unwrap_or_else(|| connection.default_namespace.clone())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Writers only replace whole values, so a poisoned lock still holds a usable state.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

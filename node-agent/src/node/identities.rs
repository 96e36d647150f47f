//! Vault sessions per pod identity: one login, token and cache for each (Vault address, Vault
//! namespace, Kubernetes namespace, service account, auth mount, role, cache TTL), shared by
//! every pod of this node with that identity.
//!
//! A session logs in with a projected service account token that a pod of the identity
//! presented and whose claims the agent checked against the attested pod. The latest such
//! token is kept for the next login (on expiry or after a 403). A session is shut down once no
//! pod on the node uses it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::metrics::Metrics;
use crate::vault::{
    JwtSource, KubernetesAuth, SecretText, VaultBackend, VaultError, VaultSettings,
};

/// Identity of a Vault login: the parts that decide the token's policies and the cache it
/// shares.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    pub vault_address: String,
    pub vault_namespace: Option<String>,
    pub namespace: String,
    pub service_account: String,
    pub auth_mount: String,
    pub role: String,
    pub cache_ttl: Duration,
}

impl Identity {
    /// Returns a short description for logs and errors, without any token.
    pub fn describe(&self) -> String {
        format!(
            "service account {}/{} as role {} at auth/{} of {}",
            self.namespace, self.service_account, self.role, self.auth_mount, self.vault_address
        )
    }
}

/// A token that a pod presented, checked against the pod, with its expiry.
struct CheckedJwt {
    jwt: SecretText,
    expires_at: SystemTime,
}

/// The latest checked token of one identity, read by the session at each login.
#[derive(Default)]
pub struct LatestJwt {
    latest: Mutex<Option<CheckedJwt>>,
}

impl LatestJwt {
    /// Stores a token whose claims were checked against a pod of this identity.
    pub fn set(&self, jwt: SecretText, expires_at: SystemTime) {
        *self.latest.lock().unwrap_or_else(|err| err.into_inner()) =
            Some(CheckedJwt { jwt, expires_at });
    }

    /// Returns whether a token is stored that is valid for at least `margin` more.
    pub fn is_fresh(&self, margin: Duration) -> bool {
        let latest = self.latest.lock().unwrap_or_else(|err| err.into_inner());
        latest
            .as_ref()
            .is_some_and(|checked| checked.expires_at > SystemTime::now() + margin)
    }
}

impl JwtSource for LatestJwt {
    fn jwt(&self) -> Result<SecretText, VaultError> {
        let latest = self.latest.lock().unwrap_or_else(|err| err.into_inner());
        match latest.as_ref() {
            Some(checked) => Ok(SecretText::new(checked.jwt.expose_secret().to_string())),
            None => Err(VaultError::NoPodToken),
        }
    }

    fn describe(&self) -> String {
        "projected token of the calling pod".to_string()
    }
}

/// The session of one identity and the pods that use it.
struct Entry {
    backend: VaultBackend,
    jwt: Arc<LatestJwt>,
    pods: HashSet<String>,
}

/// Sessions by identity. Clones share the sessions.
#[derive(Clone, Default)]
pub struct Identities {
    entries: Arc<tokio::sync::Mutex<HashMap<Identity, Entry>>>,
    /// The agent's metrics, shared by every identity's Vault backend.
    metrics: Arc<Metrics>,
}

/// A session ready for reads, and the token store the caller refreshes.
#[derive(Clone)]
pub struct Session {
    pub backend: VaultBackend,
    pub jwt: Arc<LatestJwt>,
}

impl Identities {
    /// Creates an empty set whose Vault backends count their requests in `metrics`.
    pub(crate) fn with_metrics(metrics: Arc<Metrics>) -> Identities {
        Identities {
            entries: Arc::default(),
            metrics,
        }
    }

    /// Returns the session of `identity`, used by pod `pod_uid`. A new session is built from
    /// `base` (address, TLS, timeouts) and logs in with the token in `jwt` once the caller
    /// has stored one: `prepare` runs before the first login, with the new token store.
    pub async fn session(
        &self,
        identity: &Identity,
        pod_uid: &str,
        base: &VaultSettings,
        prepare: impl FnOnce(&LatestJwt) -> Result<(), String>,
    ) -> Result<Session, String> {
        let mut entries = self.entries.lock().await;
        if let Some(entry) = entries.get_mut(identity) {
            entry.pods.insert(pod_uid.to_string());
            return Ok(Session {
                backend: entry.backend.clone(),
                jwt: Arc::clone(&entry.jwt),
            });
        }
        let jwt = Arc::new(LatestJwt::default());
        prepare(&jwt)?;
        let mut settings = base.clone();
        settings.address = identity.vault_address.clone();
        settings.namespace = identity.vault_namespace.clone();
        settings.cache_ttl = identity.cache_ttl;
        let auth = Arc::new(KubernetesAuth {
            mount: identity.auth_mount.clone(),
            role: identity.role.clone(),
            jwt: Arc::clone(&jwt) as Arc<dyn JwtSource>,
        });
        let metrics = Arc::clone(&self.metrics);
        let backend = VaultBackend::start_named(settings, auth, metrics, identity.describe())
            .await
            .map_err(|err| format!("cannot set up Vault for {}: {err}", identity.describe()))?;
        tracing::info!(identity = %identity.describe(), "new Vault identity");
        entries.insert(
            identity.clone(),
            Entry {
                backend: backend.clone(),
                jwt: Arc::clone(&jwt),
                pods: HashSet::from([pod_uid.to_string()]),
            },
        );
        Ok(Session { backend, jwt })
    }

    /// Forgets pod `pod_uid` and shuts down the sessions that no other pod uses.
    pub async fn forget_pod(&self, pod_uid: &str) {
        let unused: Vec<(Identity, Entry)> = {
            let mut entries = self.entries.lock().await;
            for entry in entries.values_mut() {
                entry.pods.remove(pod_uid);
            }
            let unused_keys: Vec<Identity> = entries
                .iter()
                .filter(|(_, entry)| entry.pods.is_empty())
                .map(|(identity, _)| identity.clone())
                .collect();
            unused_keys
                .into_iter()
                .filter_map(|identity| entries.remove_entry(&identity))
                .collect()
        };
        for (identity, entry) in unused {
            tracing::info!(identity = %identity.describe(), "Vault identity unused; dropped");
            entry.backend.shutdown().await;
        }
    }

    /// Returns each identity with a session, its backend and the UIDs of the pods that use it.
    pub async fn sessions(&self) -> Vec<(Identity, VaultBackend, Vec<String>)> {
        let entries = self.entries.lock().await;
        entries
            .iter()
            .map(|(identity, entry)| {
                let mut pods: Vec<String> = entry.pods.iter().cloned().collect();
                pods.sort();
                (identity.clone(), entry.backend.clone(), pods)
            })
            .collect()
    }

    /// Returns the number of identities with a session.
    pub async fn len(&self) -> usize {
        self.entries.lock().await.len()
    }

    /// Returns whether no identity has a session.
    pub async fn is_empty(&self) -> bool {
        self.entries.lock().await.is_empty()
    }

    /// Shuts down every session, revoking leases when configured.
    pub async fn shutdown(&self) {
        let entries: Vec<Entry> = self.entries.lock().await.drain().map(|(_, e)| e).collect();
        for entry in entries {
            entry.backend.shutdown().await;
        }
    }
}

//! Seeding and inspection of one namespace through the Rust control API.

use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;
use serde_json::Value;

use crate::database::{DatabaseEngine, DatabaseRole};
use crate::kubernetes::{KubernetesAuth, KubernetesRole};
use crate::kv::{Kv1Engine, Kv2Engine, Kv2Read};
use crate::namespace::{normalize_namespace, trim_mount, NamespaceState};
use crate::policy::Policy;
use crate::state::{ServerState, UnknownNamespace};

/// A control call could not be applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ControlError {
    #[error(transparent)]
    UnknownNamespace(#[from] UnknownNamespace),
    #[error("no {kind} mount at {mount:?} in this namespace (mount it first)")]
    UnknownMount { kind: &'static str, mount: String },
    #[error("secret data must be a JSON object")]
    NotAnObject,
    #[error("check-and-set failed: {0}")]
    Cas(String),
}

/// One namespace of a running server. Cheap to create, because it shares the server state.
#[derive(Clone)]
pub struct NamespaceHandle {
    pub(crate) state: Arc<Mutex<ServerState>>,
    /// Normalized namespace path: `""` or `team-a/`.
    pub(crate) path: String,
}

impl NamespaceHandle {
    pub(crate) fn new(
        state: Arc<Mutex<ServerState>>,
        path: &str,
    ) -> Result<NamespaceHandle, UnknownNamespace> {
        let normalized = normalize_namespace(path);
        if !state.lock().namespaces.contains_key(&normalized) {
            return Err(UnknownNamespace(path.to_owned()));
        }
        Ok(NamespaceHandle {
            state,
            path: normalized,
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut NamespaceState, SystemTime) -> T) -> T {
        let mut state = self.state.lock();
        let now = state.now();
        let namespace = state
            .namespaces
            .get_mut(&self.path)
            .expect("namespaces are never removed");
        f(namespace, now)
    }

    /// Mounts a KV v2 engine at `mount` (kept if one is already there).
    pub fn mount_kv2(&self, mount: &str) {
        self.with(|ns, _| {
            ns.kv2
                .entry(trim_mount(mount))
                .or_insert_with(Kv2Engine::default);
        });
    }

    pub fn mount_kv1(&self, mount: &str) {
        self.with(|ns, _| {
            ns.kv1
                .entry(trim_mount(mount))
                .or_insert_with(Kv1Engine::default);
        });
    }

    pub fn mount_database(&self, mount: &str) {
        self.with(|ns, _| {
            ns.database
                .entry(trim_mount(mount))
                .or_insert_with(DatabaseEngine::default);
        });
    }

    /// Enables Kubernetes auth at `auth/<mount>`. With `issuer`, logins must carry that `iss`.
    pub fn enable_kubernetes_auth(&self, mount: &str, issuer: Option<&str>) {
        self.with(|ns, _| {
            let auth = ns
                .kubernetes
                .entry(trim_mount(mount))
                .or_insert_with(Default::default);
            auth.issuer = issuer.map(str::to_owned);
        });
    }

    /// Writes a new version of a KV v2 secret and returns its version number.
    pub fn kv2_put(&self, mount: &str, path: &str, data: Value) -> Result<u64, ControlError> {
        let Value::Object(data) = data else {
            return Err(ControlError::NotAnObject);
        };
        self.with(|ns, now| {
            let engine = kv2(ns, mount)?;
            engine
                .write(path, data, None, now)
                .map_err(|e| ControlError::Cas(e.to_string()))
        })
    }

    /// Requires `check-and-set` on every write to this KV v2 mount.
    pub fn kv2_require_cas(&self, mount: &str, required: bool) -> Result<(), ControlError> {
        self.with(|ns, _| {
            kv2(ns, mount)?.cas_required = required;
            Ok(())
        })
    }

    /// Returns the data of a live KV v2 version (the latest when `version` is `None`).
    pub fn kv2_get(
        &self,
        mount: &str,
        path: &str,
        version: Option<u64>,
    ) -> Result<Option<Value>, ControlError> {
        self.with(|ns, now| {
            let engine = kv2(ns, mount)?;
            Ok(match engine.read(path, version, now) {
                Kv2Read::Live(secret, n) => secret.versions[&n].data.clone().map(Value::Object),
                _ => None,
            })
        })
    }

    pub fn kv2_delete_versions(
        &self,
        mount: &str,
        path: &str,
        versions: &[u64],
    ) -> Result<(), ControlError> {
        self.with(|ns, now| {
            kv2(ns, mount)?.delete_versions(path, versions, now);
            Ok(())
        })
    }

    pub fn kv2_destroy_versions(
        &self,
        mount: &str,
        path: &str,
        versions: &[u64],
    ) -> Result<(), ControlError> {
        self.with(|ns, now| {
            kv2(ns, mount)?.destroy_versions(path, versions, now);
            Ok(())
        })
    }

    /// Stores a KV v1 secret, replacing any previous value.
    pub fn kv1_put(&self, mount: &str, path: &str, data: Value) -> Result<(), ControlError> {
        let Value::Object(data) = data else {
            return Err(ControlError::NotAnObject);
        };
        self.with(|ns, _| {
            kv1(ns, mount)?.secrets.insert(path.to_owned(), data);
            Ok(())
        })
    }

    pub fn kv1_get(&self, mount: &str, path: &str) -> Result<Option<Value>, ControlError> {
        self.with(|ns, _| {
            Ok(kv1(ns, mount)?
                .secrets
                .get(path)
                .cloned()
                .map(Value::Object))
        })
    }

    pub fn kv1_delete(&self, mount: &str, path: &str) -> Result<(), ControlError> {
        self.with(|ns, _| {
            kv1(ns, mount)?.secrets.remove(path);
            Ok(())
        })
    }

    /// Adds or replaces a dynamic role of a database mount.
    pub fn add_database_role(
        &self,
        mount: &str,
        name: &str,
        role: DatabaseRole,
    ) -> Result<(), ControlError> {
        self.with(|ns, _| {
            let engine = ns.database.get_mut(&trim_mount(mount)).ok_or_else(|| {
                ControlError::UnknownMount {
                    kind: "database",
                    mount: mount.to_owned(),
                }
            })?;
            engine.roles.insert(name.to_owned(), role);
            Ok(())
        })
    }

    /// Adds or replaces a role of a Kubernetes auth mount.
    pub fn add_kubernetes_role(
        &self,
        mount: &str,
        name: &str,
        role: KubernetesRole,
    ) -> Result<(), ControlError> {
        self.with(|ns, _| {
            let auth: &mut KubernetesAuth =
                ns.kubernetes.get_mut(&trim_mount(mount)).ok_or_else(|| {
                    ControlError::UnknownMount {
                        kind: "kubernetes auth",
                        mount: mount.to_owned(),
                    }
                })?;
            auth.roles.insert(name.to_owned(), role);
            Ok(())
        })
    }

    /// Adds or replaces an ACL policy. Paths are relative to this namespace.
    pub fn set_policy(&self, name: &str, policy: Policy) {
        self.with(|ns, _| {
            ns.policies.insert(name.to_owned(), policy);
        });
    }
}

fn kv2<'a>(ns: &'a mut NamespaceState, mount: &str) -> Result<&'a mut Kv2Engine, ControlError> {
    ns.kv2
        .get_mut(&trim_mount(mount))
        .ok_or_else(|| ControlError::UnknownMount {
            kind: "KV v2",
            mount: mount.to_owned(),
        })
}

fn kv1<'a>(ns: &'a mut NamespaceState, mount: &str) -> Result<&'a mut Kv1Engine, ControlError> {
    ns.kv1
        .get_mut(&trim_mount(mount))
        .ok_or_else(|| ControlError::UnknownMount {
            kind: "KV v1",
            mount: mount.to_owned(),
        })
}

//! One namespace's tree: its mounts, policies and auth roles.
//!
//! Vault Enterprise namespaces are isolated: the same mount path in two namespaces contains
//! different secrets, and policies and tokens of one do not apply in another
//! (<https://developer.hashicorp.com/vault/docs/enterprise/namespaces>).

use std::collections::BTreeMap;

use crate::database::DatabaseEngine;
use crate::ids::alphanumeric;
use crate::kubernetes::KubernetesAuth;
use crate::kv::{Kv1Engine, Kv2Engine};
use crate::options::ServerOptions;
use crate::policy::Policy;

/// The engine a request path reaches, with the path below the mount.
pub(crate) enum MountMatch<'a> {
    Kv2(&'a str, &'a str),
    Kv1(&'a str, &'a str),
    Database(&'a str, &'a str),
}

pub(crate) struct NamespaceState {
    /// Short id that tokens and leases of this namespace carry as a suffix; `None` for root.
    pub(crate) id: Option<String>,
    pub(crate) kv2: BTreeMap<String, Kv2Engine>,
    pub(crate) kv1: BTreeMap<String, Kv1Engine>,
    pub(crate) database: BTreeMap<String, DatabaseEngine>,
    pub(crate) kubernetes: BTreeMap<String, KubernetesAuth>,
    pub(crate) policies: BTreeMap<String, Policy>,
}

impl NamespaceState {
    pub(crate) fn new(root: bool, options: &ServerOptions) -> NamespaceState {
        let mounts = |names: &[String]| names.iter().map(|m| trim_mount(m)).collect::<Vec<_>>();
        let mut policies = BTreeMap::new();
        policies.insert("default".to_owned(), Policy::vault_default());
        NamespaceState {
            id: (!root).then(|| alphanumeric(5)),
            kv2: mounts(&options.kv2_mounts)
                .into_iter()
                .map(|m| (m, Default::default()))
                .collect(),
            kv1: mounts(&options.kv1_mounts)
                .into_iter()
                .map(|m| (m, Default::default()))
                .collect(),
            database: mounts(&options.database_mounts)
                .into_iter()
                .map(|m| (m, Default::default()))
                .collect(),
            kubernetes: mounts(&options.kubernetes_mounts)
                .into_iter()
                .map(|m| (m, Default::default()))
                .collect(),
            policies,
        }
    }

    /// Finds the secrets engine mounted at the longest prefix of `path`.
    pub(crate) fn route<'p>(&self, path: &'p str) -> Option<MountMatch<'p>> {
        let mut best: Option<(usize, MountMatch<'p>)> = None;
        let mut consider = |mount: &str, make: fn(&'p str, &'p str) -> MountMatch<'p>| {
            let Some(rest) = strip_mount(path, mount) else {
                return;
            };
            if best.as_ref().is_none_or(|(len, _)| mount.len() > *len) {
                best = Some((mount.len(), make(&path[..mount.len()], rest)));
            }
        };
        for mount in self.kv2.keys() {
            consider(mount, MountMatch::Kv2);
        }
        for mount in self.kv1.keys() {
            consider(mount, MountMatch::Kv1);
        }
        for mount in self.database.keys() {
            consider(mount, MountMatch::Database);
        }
        best.map(|(_, m)| m)
    }
}

/// Returns the path below `mount` when `path` is the mount itself or lies under it.
pub(crate) fn strip_mount<'p>(path: &'p str, mount: &str) -> Option<&'p str> {
    let rest = path.strip_prefix(mount)?;
    if rest.is_empty() {
        return Some("");
    }
    rest.strip_prefix('/')
}

/// Normalizes a mount path: no leading or trailing slash.
pub(crate) fn trim_mount(mount: &str) -> String {
    mount.trim_matches('/').to_owned()
}

/// Normalizes a namespace path to Vault's form: empty for root, else with one trailing slash.
pub(crate) fn normalize_namespace(namespace: &str) -> String {
    let trimmed = namespace.trim_matches('/');
    if trimmed.is_empty() {
        String::new()
    } else {
        format!("{trimmed}/")
    }
}

//! Storage of the KV secrets engines, version 1 and version 2.
//!
//! Version 2 keeps every version with its own `created_time`, `deletion_time` and `destroyed`
//! flag, as <https://developer.hashicorp.com/vault/api-docs/secret/kv/kv-v2> describes.
//! `max_versions` is not enforced: every version is kept.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde_json::{Map, Value};

/// Secret data: a JSON object.
pub type SecretData = Map<String, Value>;

/// One version of a KV v2 secret.
#[derive(Clone, Debug)]
pub(crate) struct Kv2Version {
    pub(crate) data: Option<SecretData>,
    pub(crate) created_time: SystemTime,
    pub(crate) deletion_time: Option<SystemTime>,
    pub(crate) destroyed: bool,
}

/// Key metadata and all versions of a KV v2 secret.
#[derive(Clone, Debug)]
pub(crate) struct Kv2Secret {
    pub(crate) versions: BTreeMap<u64, Kv2Version>,
    pub(crate) current_version: u64,
    pub(crate) created_time: SystemTime,
    pub(crate) updated_time: SystemTime,
    pub(crate) custom_metadata: Option<BTreeMap<String, String>>,
    pub(crate) cas_required: bool,
}

/// The outcome of a KV v2 read.
pub(crate) enum Kv2Read<'a> {
    /// No secret at the path, or no such version.
    Missing,
    /// The version exists but is deleted or destroyed, so Vault returns 404 with its metadata.
    Gone(&'a Kv2Secret, u64),
    /// Live data.
    Live(&'a Kv2Secret, u64),
}

/// Rejection of a KV v2 write, with Vault's error message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum CasError {
    #[error("check-and-set parameter did not match the current version")]
    Mismatch,
    #[error("check-and-set parameter required for this call")]
    Required,
}

/// A mounted KV v2 engine.
#[derive(Clone, Debug, Default)]
pub(crate) struct Kv2Engine {
    pub(crate) secrets: BTreeMap<String, Kv2Secret>,
    pub(crate) cas_required: bool,
}

impl Kv2Engine {
    pub(crate) fn read(&self, path: &str, version: Option<u64>, now: SystemTime) -> Kv2Read<'_> {
        let Some(secret) = self.secrets.get(path) else {
            return Kv2Read::Missing;
        };
        let number = version.filter(|v| *v > 0).unwrap_or(secret.current_version);
        let Some(entry) = secret.versions.get(&number) else {
            return Kv2Read::Missing;
        };
        let deleted = entry.deletion_time.is_some_and(|t| t <= now);
        if deleted || entry.destroyed {
            return Kv2Read::Gone(secret, number);
        }
        Kv2Read::Live(secret, number)
    }

    /// Stores a new version. `cas` follows the `options.cas` rules of the write endpoint.
    pub(crate) fn write(
        &mut self,
        path: &str,
        data: SecretData,
        cas: Option<u64>,
        now: SystemTime,
    ) -> Result<u64, CasError> {
        let current = self
            .secrets
            .get(path)
            .map(|s| s.current_version)
            .unwrap_or(0);
        let required = self.cas_required || self.secrets.get(path).is_some_and(|s| s.cas_required);
        match cas {
            Some(cas) if cas != current => return Err(CasError::Mismatch),
            None if required => return Err(CasError::Required),
            _ => {}
        }

        let secret = self
            .secrets
            .entry(path.to_owned())
            .or_insert_with(|| Kv2Secret {
                versions: BTreeMap::new(),
                current_version: 0,
                created_time: now,
                updated_time: now,
                custom_metadata: None,
                cas_required: false,
            });
        secret.current_version += 1;
        secret.updated_time = now;
        let version = Kv2Version {
            data: Some(data),
            created_time: now,
            deletion_time: None,
            destroyed: false,
        };
        secret.versions.insert(secret.current_version, version);
        Ok(secret.current_version)
    }

    /// Marks versions deleted; unknown versions are ignored, as in Vault.
    pub(crate) fn delete_versions(&mut self, path: &str, versions: &[u64], now: SystemTime) {
        let Some(secret) = self.secrets.get_mut(path) else {
            return;
        };
        for number in versions {
            if let Some(entry) = secret.versions.get_mut(number) {
                if entry.deletion_time.is_none() && !entry.destroyed {
                    entry.deletion_time = Some(now);
                }
            }
        }
        secret.updated_time = now;
    }

    pub(crate) fn delete_latest(&mut self, path: &str, now: SystemTime) {
        let current = self.secrets.get(path).map(|s| s.current_version);
        if let Some(current) = current {
            self.delete_versions(path, &[current], now);
        }
    }

    pub(crate) fn undelete_versions(&mut self, path: &str, versions: &[u64], now: SystemTime) {
        let Some(secret) = self.secrets.get_mut(path) else {
            return;
        };
        for number in versions {
            if let Some(entry) = secret.versions.get_mut(number) {
                if !entry.destroyed {
                    entry.deletion_time = None;
                }
            }
        }
        secret.updated_time = now;
    }

    pub(crate) fn destroy_versions(&mut self, path: &str, versions: &[u64], now: SystemTime) {
        let Some(secret) = self.secrets.get_mut(path) else {
            return;
        };
        for number in versions {
            if let Some(entry) = secret.versions.get_mut(number) {
                entry.destroyed = true;
                entry.data = None;
            }
        }
        secret.updated_time = now;
    }

    pub(crate) fn delete_metadata(&mut self, path: &str) {
        self.secrets.remove(path);
    }

    /// Lists the keys directly under `prefix` (which is empty or ends in `/`), folders with a
    /// trailing slash.
    pub(crate) fn list(&self, prefix: &str) -> Vec<String> {
        list_keys(self.secrets.keys().map(String::as_str), prefix)
    }
}

/// A mounted KV v1 engine.
#[derive(Clone, Debug, Default)]
pub(crate) struct Kv1Engine {
    pub(crate) secrets: BTreeMap<String, SecretData>,
}

impl Kv1Engine {
    pub(crate) fn list(&self, prefix: &str) -> Vec<String> {
        list_keys(self.secrets.keys().map(String::as_str), prefix)
    }
}

/// Collects the next path segment under `prefix` for each key, deduplicated and sorted.
fn list_keys<'a>(keys: impl Iterator<Item = &'a str>, prefix: &str) -> Vec<String> {
    let mut found: Vec<String> = keys
        .filter_map(|key| key.strip_prefix(prefix))
        .filter(|rest| !rest.is_empty())
        .map(|rest| match rest.find('/') {
            Some(slash) => rest[..=slash].to_owned(),
            None => rest.to_owned(),
        })
        .collect();
    found.sort();
    found.dedup();
    found
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;

    fn data(value: &str) -> SecretData {
        json!({ "value": value }).as_object().cloned().unwrap()
    }

    #[test]
    fn versions_count_up_from_one() {
        let mut engine = Kv2Engine::default();
        let now = SystemTime::now();
        assert_eq!(engine.write("app", data("a"), None, now), Ok(1));
        assert_eq!(engine.write("app", data("b"), None, now), Ok(2));
        assert!(matches!(engine.read("app", None, now), Kv2Read::Live(_, 2)));
        assert!(matches!(
            engine.read("app", Some(1), now),
            Kv2Read::Live(_, 1)
        ));
        assert!(matches!(engine.read("app", Some(3), now), Kv2Read::Missing));
    }

    #[test]
    fn cas_zero_allows_only_first_write() {
        let mut engine = Kv2Engine::default();
        let now = SystemTime::now();
        assert_eq!(engine.write("app", data("a"), Some(0), now), Ok(1));
        assert_eq!(
            engine.write("app", data("b"), Some(0), now),
            Err(CasError::Mismatch)
        );
        assert_eq!(engine.write("app", data("b"), Some(1), now), Ok(2));
    }

    #[test]
    fn cas_required_rejects_write_without_cas() {
        let mut engine = Kv2Engine {
            cas_required: true,
            ..Kv2Engine::default()
        };
        let now = SystemTime::now();
        assert_eq!(
            engine.write("app", data("a"), None, now),
            Err(CasError::Required)
        );
    }

    #[test]
    fn soft_delete_hides_version_until_undeleted() {
        let mut engine = Kv2Engine::default();
        let now = SystemTime::now();
        engine.write("app", data("a"), None, now).unwrap();
        engine.delete_latest("app", now);
        let later = now + Duration::from_secs(1);
        assert!(matches!(
            engine.read("app", None, later),
            Kv2Read::Gone(_, 1)
        ));
        engine.undelete_versions("app", &[1], later);
        assert!(matches!(
            engine.read("app", None, later),
            Kv2Read::Live(_, 1)
        ));
    }

    #[test]
    fn destroy_drops_data_for_good() {
        let mut engine = Kv2Engine::default();
        let now = SystemTime::now();
        engine.write("app", data("a"), None, now).unwrap();
        engine.destroy_versions("app", &[1], now);
        engine.undelete_versions("app", &[1], now);
        let Kv2Read::Gone(secret, 1) = engine.read("app", None, now) else {
            panic!("not gone")
        };
        assert!(secret.versions[&1].destroyed);
        assert!(secret.versions[&1].data.is_none());
    }

    #[test]
    fn list_returns_keys_and_folders() {
        let mut engine = Kv2Engine::default();
        let now = SystemTime::now();
        for path in ["foo", "foo/bar", "foo/baz/qux", "other"] {
            engine.write(path, data("x"), None, now).unwrap();
        }
        assert_eq!(engine.list(""), ["foo", "foo/", "other"]);
        assert_eq!(engine.list("foo/"), ["bar", "baz/"]);
    }
}

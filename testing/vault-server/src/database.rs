//! The database secrets engine's dynamic roles: each read of `creds/<role>` creates a fresh
//! username and password under a new lease.
//!
//! Follows <https://developer.hashicorp.com/vault/api-docs/secret/databases#generate-credentials>.
//! No database is contacted: the credentials exist only in the response and the lease table.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use crate::clock::unix_seconds;
use crate::ids::alphanumeric;

/// A dynamic role (`database/roles/<name>`).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct DatabaseRole {
    /// Lease TTL in seconds; 0 uses the system default (768h).
    pub default_ttl: u64,
    /// Maximum lease lifetime in seconds; 0 uses the system maximum (768h).
    pub max_ttl: u64,
    /// Vault's database leases are always renewable; `false` lets tests exercise clients
    /// against a non-renewable lease.
    pub renewable: bool,
}

impl Default for DatabaseRole {
    fn default() -> DatabaseRole {
        DatabaseRole {
            default_ttl: 3600,
            max_ttl: 86400,
            renewable: true,
        }
    }
}

impl DatabaseRole {
    /// A renewable role with the given TTL and maximum TTL.
    pub fn new(ttl: Duration, max_ttl: Duration) -> DatabaseRole {
        DatabaseRole {
            default_ttl: ttl.as_secs(),
            max_ttl: max_ttl.as_secs(),
            renewable: true,
        }
    }

    pub fn renewable(mut self, renewable: bool) -> DatabaseRole {
        self.renewable = renewable;
        self
    }
}

/// A mounted database engine.
#[derive(Clone, Debug, Default)]
pub(crate) struct DatabaseEngine {
    pub(crate) roles: BTreeMap<String, DatabaseRole>,
}

/// Creates a username in the shape of Vault's default template,
/// `v-<display name>-<role>-<random>-<unix time>`.
pub(crate) fn generate_username(display_name: &str, role: &str, now: SystemTime) -> String {
    let clip = |s: &str, n: usize| s.chars().take(n).collect::<String>();
    format!(
        "v-{}-{}-{}-{}",
        clip(display_name, 8),
        clip(role, 8),
        alphanumeric(20),
        unix_seconds(now)
    )
}

/// Creates a password like Vault's default password policy: 20 characters with upper and
/// lower case letters, digits and a dash.
pub(crate) fn generate_password() -> String {
    let body = alphanumeric(16);
    format!("A1a-{body}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_differ_per_read() {
        let now = SystemTime::now();
        let first = generate_username("token", "readonly", now);
        let second = generate_username("token", "readonly", now);
        assert!(first.starts_with("v-token-readonly-"));
        assert_ne!(first, second);
    }

    #[test]
    fn password_has_twenty_characters() {
        assert_eq!(generate_password().len(), 20);
    }
}

//! The token store: service tokens with policies, TTLs and renewal.
//!
//! Shapes follow <https://developer.hashicorp.com/vault/api-docs/auth/token>. A token with a
//! TTL of zero never expires (the root token). Renewal follows Vault's rule: the new TTL is
//! the requested increment (or the token's own TTL), capped so the token never outlives its
//! maximum TTL counted from its issue time.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use serde_json::{json, Value};

use crate::clock::{rfc3339, seconds_until, unix_seconds};
use crate::duration::go_format;

/// Vault's default system maximum and default TTL: 768 hours (32 days).
pub const SYSTEM_MAX_TTL: Duration = Duration::from_secs(768 * 3600);

/// Parameters of a token created through the control API.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct TokenSpec {
    /// Use this exact token id instead of a random one.
    pub id: Option<String>,
    /// Policy names; `default` is added unless `no_default_policy`.
    pub policies: Vec<String>,
    pub no_default_policy: bool,
    /// TTL in seconds; `None` uses the system default of 768 hours, `Some(0)` never expires.
    pub ttl: Option<u64>,
    /// Hard limit in seconds on the token's lifetime; 0 means the system maximum.
    pub explicit_max_ttl: u64,
    pub renewable: bool,
    pub display_name: String,
    pub meta: Option<BTreeMap<String, String>>,
    /// Namespace path such as `team-a` or `team-a/sub`; empty for the root namespace.
    pub namespace: String,
}

impl Default for TokenSpec {
    fn default() -> TokenSpec {
        TokenSpec {
            id: None,
            policies: Vec::new(),
            no_default_policy: false,
            ttl: None,
            explicit_max_ttl: 0,
            renewable: true,
            display_name: "token".to_owned(),
            meta: None,
            namespace: String::new(),
        }
    }
}

impl TokenSpec {
    /// Creates a spec for a renewable token with these policies and the default TTL.
    pub fn new(policies: &[&str]) -> TokenSpec {
        TokenSpec {
            policies: policies.iter().map(|p| (*p).to_owned()).collect(),
            ..TokenSpec::default()
        }
    }

    pub fn ttl(mut self, ttl: Duration) -> TokenSpec {
        self.ttl = Some(ttl.as_secs());
        self
    }

    pub fn explicit_max_ttl(mut self, max: Duration) -> TokenSpec {
        self.explicit_max_ttl = max.as_secs();
        self
    }

    pub fn renewable(mut self, renewable: bool) -> TokenSpec {
        self.renewable = renewable;
        self
    }

    pub fn namespace(mut self, namespace: &str) -> TokenSpec {
        self.namespace = namespace.to_owned();
        self
    }

    pub fn id(mut self, id: &str) -> TokenSpec {
        self.id = Some(id.to_owned());
        self
    }
}

/// A token the control API issued. `Debug` does not print the token id.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedToken {
    /// The client token to send as `X-Vault-Token`.
    pub token: String,
    pub accessor: String,
}

impl fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedToken")
            .field("token", &"<redacted>")
            .field("accessor", &self.accessor)
            .finish()
    }
}

/// One stored token.
#[derive(Clone)]
pub(crate) struct TokenEntry {
    pub(crate) id: String,
    pub(crate) accessor: String,
    /// Namespace path, `""` for root or `team-a/` style with a trailing slash.
    pub(crate) namespace: String,
    pub(crate) policies: Vec<String>,
    pub(crate) display_name: String,
    /// The path that created it, such as `auth/token/create` or `auth/kubernetes/login`.
    pub(crate) path: String,
    pub(crate) meta: Option<BTreeMap<String, String>>,
    pub(crate) issue_time: SystemTime,
    /// The TTL at creation; also the TTL a renewal without increment grants. Zero: no expiry.
    pub(crate) creation_ttl: Duration,
    pub(crate) expire_time: Option<SystemTime>,
    pub(crate) explicit_max_ttl: Duration,
    /// The token never lives past this, whatever renewals ask for.
    pub(crate) max_expire_time: Option<SystemTime>,
    pub(crate) renewable: bool,
    pub(crate) orphan: bool,
    pub(crate) entity_id: String,
    pub(crate) role: Option<String>,
    pub(crate) last_renewal_time: Option<SystemTime>,
}

impl TokenEntry {
    pub(crate) fn is_expired(&self, now: SystemTime) -> bool {
        self.expire_time.is_some_and(|t| t <= now)
    }

    /// Builds the `data` of `auth/token/lookup-self`.
    pub(crate) fn lookup_data(&self, now: SystemTime) -> Value {
        let ttl = self.expire_time.map(|t| seconds_until(now, t)).unwrap_or(0);
        json!({
            "accessor": self.accessor,
            "creation_time": unix_seconds(self.issue_time),
            "creation_ttl": self.creation_ttl.as_secs(),
            "display_name": self.display_name,
            "entity_id": self.entity_id,
            "expire_time": self.expire_time.map(rfc3339),
            "explicit_max_ttl": self.explicit_max_ttl.as_secs(),
            "id": self.id,
            "issue_time": rfc3339(self.issue_time),
            "last_renewal_time": self.last_renewal_time.map(unix_seconds),
            "meta": self.meta,
            "num_uses": 0,
            "orphan": self.orphan,
            "path": self.path,
            "policies": self.policies,
            "renewable": self.renewable,
            "role": self.role,
            "ttl": ttl,
            "type": "service",
        })
    }

    /// Builds the `auth` block of login and renewal responses.
    pub(crate) fn auth_block(&self, now: SystemTime) -> Value {
        let lease_duration = self.expire_time.map(|t| seconds_until(now, t)).unwrap_or(0);
        json!({
            "client_token": self.id,
            "accessor": self.accessor,
            "policies": self.policies,
            "token_policies": self.policies,
            "metadata": self.meta,
            "lease_duration": lease_duration,
            "renewable": self.renewable,
            "entity_id": self.entity_id,
            "token_type": "service",
            "orphan": self.orphan,
            "mfa_requirement": null,
            "num_uses": 0,
        })
    }
}

/// Renewal failure, with Vault's error texts.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RenewError {
    #[error("lease not found")]
    NotFound,
    #[error("lease is not renewable")]
    NotRenewable,
}

/// Computes a renewed TTL the way Vault's `framework.CalculateTTL` does and returns it with
/// the warning Vault adds when the maximum TTL capped it.
pub(crate) fn capped_ttl(
    now: SystemTime,
    requested: Duration,
    max_expire_time: SystemTime,
) -> (Duration, Option<String>) {
    let left = max_expire_time
        .duration_since(now)
        .unwrap_or(Duration::ZERO);
    if requested > left {
        let warning = format!(
            "TTL of \"{}\" exceeded the effective max_ttl of \"{}\"; TTL value is capped \
             accordingly",
            go_format(requested),
            go_format(Duration::from_secs(left.as_secs())),
        );
        return (Duration::from_secs(left.as_secs()), Some(warning));
    }
    (requested, None)
}

/// All tokens of the server, across namespaces.
#[derive(Default)]
pub(crate) struct TokenStore {
    by_id: HashMap<String, TokenEntry>,
}

impl TokenStore {
    pub(crate) fn insert(&mut self, entry: TokenEntry) {
        self.by_id.insert(entry.id.clone(), entry);
    }

    /// Returns the live token with this id; an expired one counts as absent.
    pub(crate) fn get(&self, id: &str, now: SystemTime) -> Option<&TokenEntry> {
        self.by_id.get(id).filter(|t| !t.is_expired(now))
    }

    pub(crate) fn remove(&mut self, id: &str) -> Option<TokenEntry> {
        self.by_id.remove(id)
    }

    /// Removes and returns every token whose TTL has run out.
    pub(crate) fn take_expired(&mut self, now: SystemTime) -> Vec<TokenEntry> {
        let expired: Vec<String> = self
            .by_id
            .values()
            .filter(|t| t.is_expired(now))
            .map(|t| t.id.clone())
            .collect();
        expired
            .iter()
            .filter_map(|id| self.by_id.remove(id))
            .collect()
    }

    /// Renews a token's TTL; `increment` of `None` reuses its creation TTL.
    pub(crate) fn renew(
        &mut self,
        id: &str,
        increment: Option<Duration>,
        now: SystemTime,
    ) -> Result<Option<String>, RenewError> {
        let entry = self.by_id.get_mut(id).ok_or(RenewError::NotFound)?;
        let Some(max_expire_time) = entry.max_expire_time else {
            // A token without a TTL has no lease to renew.
            return Err(RenewError::NotFound);
        };
        if !entry.renewable {
            return Err(RenewError::NotRenewable);
        }
        let requested = increment
            .filter(|d| !d.is_zero())
            .unwrap_or(entry.creation_ttl);
        let (ttl, warning) = capped_ttl(now, requested, max_expire_time);
        entry.expire_time = Some(now + ttl);
        entry.last_renewal_time = Some(now);
        Ok(warning)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(now: SystemTime, ttl: u64, max: u64) -> TokenEntry {
        TokenEntry {
            id: "hvs.test".to_owned(),
            accessor: "acc".to_owned(),
            namespace: String::new(),
            policies: vec!["default".to_owned()],
            display_name: "token".to_owned(),
            path: "auth/token/create".to_owned(),
            meta: None,
            issue_time: now,
            creation_ttl: Duration::from_secs(ttl),
            expire_time: Some(now + Duration::from_secs(ttl)),
            explicit_max_ttl: Duration::ZERO,
            max_expire_time: Some(now + Duration::from_secs(max)),
            renewable: true,
            orphan: false,
            entity_id: String::new(),
            role: None,
            last_renewal_time: None,
        }
    }

    #[test]
    fn renewal_extends_from_now() {
        let now = SystemTime::now();
        let mut store = TokenStore::default();
        store.insert(entry(now, 60, 3600));
        let later = now + Duration::from_secs(50);
        assert_eq!(store.renew("hvs.test", None, later), Ok(None));
        let token = store.get("hvs.test", later).unwrap();
        assert_eq!(token.expire_time, Some(later + Duration::from_secs(60)));
    }

    #[test]
    fn renewal_is_capped_by_max_ttl_with_warning() {
        let now = SystemTime::now();
        let mut store = TokenStore::default();
        store.insert(entry(now, 60, 100));
        let later = now + Duration::from_secs(50);
        let warning = store
            .renew("hvs.test", Some(Duration::from_secs(3600)), later)
            .unwrap();
        assert_eq!(
            warning.as_deref(),
            Some(
                "TTL of \"1h0m0s\" exceeded the effective max_ttl of \"50s\"; TTL value is \
                 capped accordingly"
            )
        );
        let token = store.get("hvs.test", later).unwrap();
        assert_eq!(token.expire_time, Some(now + Duration::from_secs(100)));
    }

    #[test]
    fn expired_token_is_absent() {
        let now = SystemTime::now();
        let mut store = TokenStore::default();
        store.insert(entry(now, 60, 3600));
        assert!(store
            .get("hvs.test", now + Duration::from_secs(60))
            .is_none());
        assert_eq!(store.take_expired(now + Duration::from_secs(61)).len(), 1);
    }

    #[test]
    fn non_renewable_token_is_rejected() {
        let now = SystemTime::now();
        let mut store = TokenStore::default();
        store.insert(TokenEntry {
            renewable: false,
            ..entry(now, 60, 3600)
        });
        assert_eq!(
            store.renew("hvs.test", None, now),
            Err(RenewError::NotRenewable)
        );
    }

    #[test]
    fn issued_token_debug_hides_token() {
        let issued = IssuedToken {
            token: "hvs.secret".to_owned(),
            accessor: "a".to_owned(),
        };
        assert!(!format!("{issued:?}").contains("hvs.secret"));
    }
}

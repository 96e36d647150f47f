//! The lease table of dynamic secrets, renewed and revoked through `sys/leases`.
//!
//! Follows <https://developer.hashicorp.com/vault/api-docs/system/leases>. Vault revokes a
//! lease when it expires and when the token that created it is revoked or expires. This table
//! does the same and records every revocation, so tests can assert on it.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use crate::tokens::{capped_ttl, RenewError};

/// One live lease.
#[derive(Clone, Debug)]
pub(crate) struct LeaseEntry {
    pub(crate) id: String,
    /// Namespace path of the engine that issued it (`""` or `team-a/`).
    pub(crate) namespace: String,
    pub(crate) issue_time: SystemTime,
    pub(crate) expire_time: SystemTime,
    pub(crate) last_renewal_time: Option<SystemTime>,
    /// The lease never lives past this.
    pub(crate) max_expire_time: SystemTime,
    /// TTL granted by a renewal without an increment (the role's default TTL).
    pub(crate) default_ttl: Duration,
    pub(crate) renewable: bool,
    /// Accessor of the token that created the lease.
    pub(crate) token_accessor: Option<String>,
}

/// A lease as the control API reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseInfo {
    pub lease_id: String,
    /// Namespace path, empty for the root namespace.
    pub namespace: String,
    pub issue_time: SystemTime,
    pub expire_time: SystemTime,
    pub last_renewal_time: Option<SystemTime>,
    pub renewable: bool,
}

/// Cause of a lease's end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RevocationReason {
    /// A client called `sys/leases/revoke`.
    Revoked,
    /// Its TTL ran out.
    Expired,
    /// The token that created it was revoked or expired.
    TokenRevoked,
}

/// A lease that has ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevokedLease {
    pub lease_id: String,
    pub reason: RevocationReason,
    pub at: SystemTime,
}

/// All leases of the server.
#[derive(Default)]
pub(crate) struct LeaseTable {
    live: BTreeMap<String, LeaseEntry>,
    revoked: Vec<RevokedLease>,
}

impl LeaseTable {
    pub(crate) fn insert(&mut self, entry: LeaseEntry) {
        self.live.insert(entry.id.clone(), entry);
    }

    pub(crate) fn get(&self, id: &str) -> Option<&LeaseEntry> {
        self.live.get(id)
    }

    /// Revokes every lease whose TTL has run out.
    pub(crate) fn expire(&mut self, now: SystemTime) {
        let expired: Vec<String> = self
            .live
            .values()
            .filter(|l| l.expire_time <= now)
            .map(|l| l.id.clone())
            .collect();
        for id in expired {
            self.revoke(&id, RevocationReason::Expired, now);
        }
    }

    /// Removes a lease and records why; returns whether it was live.
    pub(crate) fn revoke(&mut self, id: &str, reason: RevocationReason, now: SystemTime) -> bool {
        if self.live.remove(id).is_none() {
            return false;
        }
        self.revoked.push(RevokedLease {
            lease_id: id.to_owned(),
            reason,
            at: now,
        });
        true
    }

    /// Revokes the leases a token created.
    pub(crate) fn revoke_for_token(&mut self, accessor: &str, now: SystemTime) {
        let owned: Vec<String> = self
            .live
            .values()
            .filter(|l| l.token_accessor.as_deref() == Some(accessor))
            .map(|l| l.id.clone())
            .collect();
        for id in owned {
            self.revoke(&id, RevocationReason::TokenRevoked, now);
        }
    }

    /// Renews a lease and returns the granted TTL and Vault's capping warning, if any.
    ///
    /// An expired lease has already been revoked by [`LeaseTable::expire`], so renewing it
    /// fails with `lease not found`, the error Vault returns once its expiration manager has
    /// revoked the lease.
    pub(crate) fn renew(
        &mut self,
        id: &str,
        increment: Option<Duration>,
        now: SystemTime,
    ) -> Result<(Duration, Option<String>), RenewError> {
        let lease = self.live.get_mut(id).ok_or(RenewError::NotFound)?;
        if !lease.renewable {
            return Err(RenewError::NotRenewable);
        }
        let requested = increment
            .filter(|d| !d.is_zero())
            .unwrap_or(lease.default_ttl);
        let (ttl, warning) = capped_ttl(now, requested, lease.max_expire_time);
        lease.expire_time = now + ttl;
        lease.last_renewal_time = Some(now);
        Ok((ttl, warning))
    }

    pub(crate) fn live(&self) -> Vec<LeaseInfo> {
        self.live
            .values()
            .map(|l| LeaseInfo {
                lease_id: l.id.clone(),
                namespace: l.namespace.trim_end_matches('/').to_owned(),
                issue_time: l.issue_time,
                expire_time: l.expire_time,
                last_renewal_time: l.last_renewal_time,
                renewable: l.renewable,
            })
            .collect()
    }

    pub(crate) fn revoked(&self) -> Vec<RevokedLease> {
        self.revoked.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(now: SystemTime, renewable: bool) -> LeaseEntry {
        LeaseEntry {
            id: "database/creds/app/abc".to_owned(),
            namespace: String::new(),
            issue_time: now,
            expire_time: now + Duration::from_secs(60),
            last_renewal_time: None,
            max_expire_time: now + Duration::from_secs(300),
            default_ttl: Duration::from_secs(60),
            renewable,
            token_accessor: Some("acc".to_owned()),
        }
    }

    #[test]
    fn renew_caps_at_max_ttl() {
        let now = SystemTime::now();
        let mut table = LeaseTable::default();
        table.insert(lease(now, true));
        let later = now + Duration::from_secs(280);
        let (ttl, warning) = table.renew("database/creds/app/abc", None, later).unwrap();
        assert_eq!(ttl, Duration::from_secs(20));
        assert!(warning.is_some());
    }

    #[test]
    fn expired_lease_is_revoked_and_cannot_renew() {
        let now = SystemTime::now();
        let mut table = LeaseTable::default();
        table.insert(lease(now, true));
        let later = now + Duration::from_secs(61);
        table.expire(later);
        assert_eq!(
            table.renew("database/creds/app/abc", None, later),
            Err(RenewError::NotFound)
        );
        assert_eq!(table.revoked()[0].reason, RevocationReason::Expired);
    }

    #[test]
    fn token_revocation_takes_its_leases() {
        let now = SystemTime::now();
        let mut table = LeaseTable::default();
        table.insert(lease(now, true));
        table.revoke_for_token("acc", now);
        assert!(table.live().is_empty());
        assert_eq!(table.revoked()[0].reason, RevocationReason::TokenRevoked);
    }

    #[test]
    fn non_renewable_lease_is_rejected() {
        let now = SystemTime::now();
        let mut table = LeaseTable::default();
        table.insert(lease(now, false));
        assert_eq!(
            table.renew("database/creds/app/abc", None, now),
            Err(RenewError::NotRenewable)
        );
    }
}

//! Leases of dynamic secrets: renewed at 2/3 of their duration while renewable and still
//! cached, left to end otherwise (the cache entry ends with the lease, so the next request
//! reads new credentials), and revoked at shutdown when configured.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;
use tokio::task::JoinHandle;

use super::cache::CacheKey;
use super::error::VaultError;
use super::read::LeaseGrant;
use super::Inner;
use crate::metrics::VaultOperation;

/// Minimum and maximum pause before retrying a failed renewal.
const MIN_RENEW_RETRY: Duration = Duration::from_secs(1);
const MAX_RENEW_RETRY: Duration = Duration::from_secs(30);

/// Live leases and their renewal tasks.
#[derive(Default)]
pub(crate) struct LeaseKeeper {
    tasks: Mutex<HashMap<String, JoinHandle<()>>>,
}

impl LeaseKeeper {
    /// Starts looking after `lease`, which was read for `key`.
    pub(crate) fn track(&self, inner: &Arc<Inner>, key: CacheKey, lease: LeaseGrant) {
        tracing::info!(
            path = %key.target,
            lease = %lease_prefix(&lease.id),
            ttl_secs = lease.duration.as_secs(),
            renewable = lease.renewable,
            "read a dynamic secret under a lease"
        );
        let id = lease.id.clone();
        let task = tokio::spawn(keep_lease(Arc::downgrade(inner), key, lease));
        if let Some(previous) = self.lock().insert(id, task) {
            previous.abort();
        }
    }

    fn finished(&self, lease_id: &str) {
        self.lock().remove(lease_id);
    }

    /// Stops every renewal task and returns the ids of the leases that were live.
    pub(crate) fn stop_all(&self) -> Vec<String> {
        let tasks: Vec<(String, JoinHandle<()>)> = self.lock().drain().collect();
        tasks
            .into_iter()
            .map(|(id, task)| {
                task.abort();
                id
            })
            .collect()
    }

    pub(crate) fn live_count(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, JoinHandle<()>>> {
        self.tasks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Renews `lease` at 2/3 of each granted duration while the cache still holds it, until
/// Vault stops extending it. Returns at the lease's end.
async fn keep_lease(inner: Weak<Inner>, key: CacheKey, lease: LeaseGrant) {
    let mut end = Instant::now() + lease.duration;
    let mut granted = lease.duration;
    let mut renewable = lease.renewable;
    let mut retrying = false;
    loop {
        let remaining = end.saturating_duration_since(Instant::now());
        if !renewable || remaining.is_zero() {
            tokio::time::sleep(remaining).await;
            break;
        }
        if !retrying {
            tokio::time::sleep(granted * 2 / 3).await;
        }
        let Some(strong) = inner.upgrade() else {
            return;
        };
        if !strong.cache.holds_lease(&key, &lease.id).await {
            // The entry was replaced or evicted, so nobody is served from this lease any more.
            // NOTE: such a lease is left to expire in Vault and is not revoked at shutdown.
            tracing::debug!(lease = %lease_prefix(&lease.id), "lease no longer cached");
            break;
        }
        match renew(&strong, &lease.id, lease.duration).await {
            Ok(new_duration) => {
                retrying = false;
                let new_end = Instant::now() + new_duration;
                // Vault caps a renewal at the lease's max TTL, and then it stops extending.
                if new_end <= end + Duration::from_secs(1) {
                    tracing::info!(
                        lease = %lease_prefix(&lease.id),
                        ttl_secs = new_duration.as_secs(),
                        "lease reached its maximum TTL; new credentials are read when it ends"
                    );
                    renewable = false;
                }
                end = new_end;
                granted = new_duration;
                strong.cache.extend_lease(&key, &lease.id, end).await;
                if renewable {
                    tracing::info!(
                        lease = %lease_prefix(&lease.id),
                        ttl_secs = new_duration.as_secs(),
                        "renewed lease"
                    );
                }
            }
            Err(err) if err.is_unavailable() => {
                let retry = (remaining / 6).clamp(MIN_RENEW_RETRY, MAX_RENEW_RETRY);
                tracing::warn!(
                    lease = %lease_prefix(&lease.id),
                    %err,
                    retry_secs = retry.as_secs(),
                    "renewing lease failed; retrying"
                );
                drop(strong);
                tokio::time::sleep(retry).await;
                retrying = true;
            }
            Err(err) => {
                tracing::warn!(
                    lease = %lease_prefix(&lease.id),
                    %err,
                    "Vault refused to renew the lease; new credentials are read when it ends"
                );
                renewable = false;
            }
        }
    }
    if let Some(strong) = inner.upgrade() {
        strong.leases.finished(&lease.id);
    }
}

/// Renews a lease by `increment` and returns the duration Vault granted.
async fn renew(inner: &Inner, lease_id: &str, increment: Duration) -> Result<Duration, VaultError> {
    let token = inner.session.token().await?;
    let body = json!({ "lease_id": lease_id, "increment": increment.as_secs() });
    let sent = inner
        .transport
        .send(
            Method::PUT,
            "sys/leases/renew",
            None,
            Some(&token),
            Some(&body),
            false,
        )
        .await;
    inner.transport.count(VaultOperation::LeaseRenew, &sent);
    let reply = sent?;
    let seconds = reply
        .body
        .get("lease_duration")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| VaultError::InvalidResponse {
            path: "sys/leases/renew".to_string(),
            reason: "no lease_duration in the response".to_string(),
        })?;
    Ok(Duration::from_secs(seconds))
}

/// Revokes each lease in `lease_ids`, logging failures. Returns how many were revoked.
pub(crate) async fn revoke_all(inner: &Inner, lease_ids: &[String]) -> usize {
    if lease_ids.is_empty() {
        return 0;
    }
    let token = match inner.session.token().await {
        Ok(token) => token,
        Err(err) => {
            tracing::warn!(%err, leases = lease_ids.len(), "cannot revoke leases: no token");
            return 0;
        }
    };
    let mut revoked = 0;
    for id in lease_ids {
        let body = json!({ "lease_id": id });
        let result = inner
            .transport
            .send(
                Method::PUT,
                "sys/leases/revoke",
                None,
                Some(&token),
                Some(&body),
                false,
            )
            .await;
        inner.transport.count(VaultOperation::LeaseRevoke, &result);
        match result {
            Ok(_) => {
                revoked += 1;
                tracing::info!(lease = %lease_prefix(id), "revoked lease");
            }
            Err(err) => tracing::warn!(lease = %lease_prefix(id), %err, "revoking lease failed"),
        }
    }
    revoked
}

/// Shortens a lease id for logs: the path it was read from and the first characters of its
/// random part, such as `database/creds/app/Xy3k…`.
pub(crate) fn lease_prefix(lease_id: &str) -> String {
    let (path, id) = lease_id.rsplit_once('/').unwrap_or(("", lease_id));
    let head: String = id.chars().take(4).collect();
    if path.is_empty() {
        format!("{head}…")
    } else {
        format!("{path}/{head}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_prefix_keeps_path_and_four_characters() {
        assert_eq!(
            lease_prefix("database/creds/app/AbCdEfGh123"),
            "database/creds/app/AbCd…"
        );
        assert_eq!(lease_prefix("XyZ"), "XyZ…");
    }
}

//! The watch of the default backend's Secret: each change replaces its cached data at once,
//! so an edit reaches the next request without waiting for the cache TTL.

use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::watcher::{self, Event};
use tokio::task::JoinHandle;

use super::client::secret_data;
use super::{KubeSecrets, SecretKey};
use crate::value_cache::Fetched;

/// Pause after the first failed attempt; it doubles after each further failure.
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// Longest pause between two attempts.
const MAX_RETRY: Duration = Duration::from_secs(60);

/// The Secret a watch serves and the API server it is read from, for log lines.
pub(super) struct WatchTarget {
    pub server: String,
    pub namespace: String,
    pub name: String,
}

/// Starts a task that watches the Secret of `target` with `client` (the kubeconfig's
/// credentials) and stores each version in the cache of `backend`.
///
/// After a failure the watch is retried with exponential backoff from [`FIRST_RETRY`] up to
/// [`MAX_RETRY`]. The first failure, and each change of its cause, is logged as a warning
/// that names the Secret and the API server. Repeats are counted and logged at debug level,
/// with a warning at 10, 100, 1000 … failures. The recovery is logged with the count.
pub(super) fn spawn(
    backend: KubeSecrets,
    client: kube::Client,
    target: WatchTarget,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let WatchTarget {
            server,
            namespace,
            name,
        } = target;
        let api: kube::Api<Secret> = kube::Api::namespaced(client, &namespace);
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        // kube's own backoff is reset by the `Init` event that starts every attempt, so with it
        // a refused list is retried about once a second forever. This loop backs off instead.
        let mut events = watcher::watcher(api, config).boxed();
        let key = SecretKey {
            identity: std::sync::Arc::from("kubeconfig"),
            namespace: namespace.clone(),
            name: name.clone(),
        };
        let inner = &backend.inner;
        let mut failures = FailureLog::default();
        // Whether the current list delivered the Secret; a list without it means it is absent.
        let mut listed = false;
        while let Some(event) = events.next().await {
            let event = match event {
                Ok(event) => event,
                Err(err) => {
                    let delay = failures.record(&err, &server, &namespace, &name);
                    tokio::time::sleep(delay).await;
                    continue;
                }
            };
            if !matches!(event, Event::Init) {
                failures.recovered(&server, &namespace, &name);
            }
            match event {
                Event::Init => listed = false,
                Event::InitApply(secret) | Event::Apply(secret) => {
                    listed = true;
                    let value = Some(secret_data(secret));
                    inner
                        .cache
                        .insert(
                            key.clone(),
                            Fetched {
                                value,
                                ttl: None,
                                lease: None,
                            },
                        )
                        .await;
                    tracing::debug!(%namespace, %name, "default Secret updated from its watch");
                }
                Event::Delete(_) => {
                    let absent = Fetched {
                        value: None,
                        ttl: None,
                        lease: None,
                    };
                    inner.cache.insert(key.clone(), absent).await;
                    tracing::info!(%namespace, %name, "default Secret deleted");
                }
                Event::InitDone => {
                    if !listed {
                        let absent = Fetched {
                            value: None,
                            ttl: None,
                            lease: None,
                        };
                        inner.cache.insert(key.clone(), absent).await;
                        tracing::warn!(%namespace, %name, "default Secret does not exist");
                    }
                    inner.watch_synced.store(true, Ordering::Relaxed);
                }
            }
        }
    })
}

/// Consecutive failures of the watch, for the backoff and for rate-limited log lines.
#[derive(Default)]
struct FailureLog {
    count: u32,
    /// The message of the latest failure, so that a new cause is logged as a warning again.
    last_message: Option<String>,
}

impl FailureLog {
    /// Counts a failure, logs it and returns the pause before the next attempt.
    fn record(
        &mut self,
        err: &watcher::Error,
        server: &str,
        namespace: &str,
        name: &str,
    ) -> Duration {
        self.count = self.count.saturating_add(1);
        let delay = retry_delay(self.count);
        let message = describe_failure(err, namespace);
        let retry_secs = delay.as_secs();
        let failures = self.count;
        if self.last_message.as_deref() != Some(message.as_str()) {
            tracing::warn!(
                %server,
                %namespace,
                %name,
                retry_secs,
                "watch of the default Secret {namespace}/{name} on {server} failed: {message}; \
                 retrying with backoff"
            );
        } else if is_power_of_ten(failures) {
            tracing::warn!(
                %server,
                %namespace,
                %name,
                failures,
                retry_secs,
                "watch of the default Secret {namespace}/{name} still fails after {failures} \
                 attempts: {message}"
            );
        } else {
            tracing::debug!(%namespace, %name, failures, retry_secs, %message, "watch failed again");
        }
        self.last_message = Some(message);
        delay
    }

    /// Resets the count after an event of a working watch, and logs the recovery.
    fn recovered(&mut self, server: &str, namespace: &str, name: &str) {
        if self.count == 0 {
            return;
        }
        tracing::info!(
            %server,
            %namespace,
            %name,
            failures = self.count,
            "watch of the default Secret {namespace}/{name} works again after {} failed \
             attempts",
            self.count
        );
        *self = FailureLog::default();
    }
}

/// Returns the pause after `failures` consecutive failures: [`FIRST_RETRY`], doubled per
/// further failure, at most [`MAX_RETRY`].
fn retry_delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    FIRST_RETRY.saturating_mul(1 << doublings).min(MAX_RETRY)
}

fn is_power_of_ten(mut number: u32) -> bool {
    while number >= 10 && number.is_multiple_of(10) {
        number /= 10;
    }
    number == 1
}

/// Describes a watch failure in plain words, with the fix for a refusal by RBAC.
fn describe_failure(err: &watcher::Error, namespace: &str) -> String {
    let client_error = match err {
        watcher::Error::InitialListFailed(err)
        | watcher::Error::WatchStartFailed(err)
        | watcher::Error::WatchFailed(err) => err,
        watcher::Error::WatchError(status) => return describe_status(status, namespace),
        watcher::Error::NoResourceVersion => return err.to_string(),
    };
    match client_error {
        kube::Error::Api(status) => describe_status(status, namespace),
        other => crate::http_backend::error_chain(other),
    }
}

fn describe_status(status: &kube::core::Status, namespace: &str) -> String {
    match status.code {
        403 => format!(
            "the API server answered 403 ({}); the watch needs `list` and `watch` on secrets \
             in namespace {namespace}, and until it works values are read with `get` on each \
             cache miss",
            status.message
        ),
        401 => "the API server rejected the kubeconfig's credentials (401)".to_string(),
        code => format!("HTTP {code} {}: {}", status.reason, status.message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_doubles_to_cap() {
        let delays: Vec<u64> = (1..=9).map(|n| retry_delay(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(retry_delay(u32::MAX), MAX_RETRY);
    }

    #[test]
    fn power_of_ten_check() {
        for number in [1, 10, 100, 1000] {
            assert!(is_power_of_ten(number), "{number}");
        }
        for number in [0, 2, 11, 20, 101, 110] {
            assert!(!is_power_of_ten(number), "{number}");
        }
    }

    #[test]
    fn forbidden_watch_message_names_grant() {
        let status = kube::core::Status {
            code: 403,
            reason: "Forbidden".to_string(),
            message: "secrets is forbidden: User \"alice\" cannot list".to_string(),
            ..kube::core::Status::default()
        };
        let err = watcher::Error::InitialListFailed(kube::Error::Api(Box::new(status)));
        let message = describe_failure(&err, "shop");
        assert!(message.contains("needs `list` and `watch` on secrets in namespace shop"));
        assert!(message.contains("read with `get`"), "{message}");
        assert!(!message.contains("Status {"), "{message}");
    }
}

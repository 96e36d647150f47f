//! The watch of the default backend's Secret: each change replaces its cached data at once,
//! so an edit reaches the next request without waiting for the cache TTL.

use std::sync::atomic::Ordering;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use tokio::task::JoinHandle;

use super::client::secret_data;
use super::{KubeSecrets, SecretKey};
use crate::value_cache::Fetched;

/// Starts a task that watches Secret `namespace/name` with `client` (the kubeconfig's
/// credentials) and stores each version in the cache of `backend`. The watcher backs off and
/// resumes after errors; each error is logged once per failed attempt.
pub(super) fn spawn(
    backend: KubeSecrets,
    client: kube::Client,
    namespace: String,
    name: String,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let api: kube::Api<Secret> = kube::Api::namespaced(client, &namespace);
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let mut events = watcher::watcher(api, config).default_backoff().boxed();
        let key = SecretKey {
            identity: std::sync::Arc::from("kubeconfig"),
            namespace: namespace.clone(),
            name: name.clone(),
        };
        let inner = &backend.inner;
        // Whether the current list delivered the Secret; a list without it means it is absent.
        let mut listed = false;
        while let Some(event) = events.next().await {
            match event {
                Ok(Event::Init) => listed = false,
                Ok(Event::InitApply(secret) | Event::Apply(secret)) => {
                    listed = true;
                    let value = Some(secret_data(secret));
                    inner
                        .cache
                        .insert(key.clone(), Fetched { value, ttl: None })
                        .await;
                    tracing::debug!(%namespace, %name, "default Secret updated from its watch");
                }
                Ok(Event::Delete(_)) => {
                    inner
                        .cache
                        .insert(
                            key.clone(),
                            Fetched {
                                value: None,
                                ttl: None,
                            },
                        )
                        .await;
                    tracing::info!(%namespace, %name, "default Secret deleted");
                }
                Ok(Event::InitDone) => {
                    if !listed {
                        inner
                            .cache
                            .insert(
                                key.clone(),
                                Fetched {
                                    value: None,
                                    ttl: None,
                                },
                            )
                            .await;
                        tracing::warn!(%namespace, %name, "default Secret does not exist");
                    }
                    inner.watch_synced.store(true, Ordering::Relaxed);
                }
                Err(err) => {
                    tracing::warn!(
                        %namespace,
                        %name,
                        %err,
                        "watch of the default Secret failed; retrying with backoff"
                    );
                }
            }
        }
    })
}

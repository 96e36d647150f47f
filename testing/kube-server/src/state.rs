//! The server's objects and their history: pods, service accounts, nodes, the global resource
//! version, retained watch events, registered tokens and request counts.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use tokio::sync::broadcast;

use crate::auth::Authenticator;
use crate::ids;
use crate::jwt::{self, SigningKey, TokenBinding};
use crate::status::ApiError;

/// Watch events buffered per watcher before a slow one is disconnected.
const WATCH_BUFFER: usize = 1024;

/// Change to a pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EventType {
    Added,
    Modified,
    Deleted,
}

/// One change to a pod, kept for watches that resume from an earlier resource version.
#[derive(Debug)]
pub(crate) struct StoredEvent {
    pub(crate) event_type: EventType,
    pub(crate) resource_version: u64,
    pub(crate) pod: Arc<Pod>,
    /// The pod before a modification, so a filtered watch can tell a pod that moved into or
    /// out of its selector (the API server sends those as `ADDED` and `DELETED`).
    pub(crate) previous: Option<Arc<Pod>>,
}

/// Retained events to replay and a receiver of later ones.
pub(crate) type WatchStart = (Vec<Arc<StoredEvent>>, broadcast::Receiver<Arc<StoredEvent>>);

/// One request as it arrived, with the verb the API server's request info would give it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedRequest {
    /// `list`, `watch`, `get`, `create`, or the lower-case HTTP method for other paths.
    pub verb: String,
    /// `pods`, `serviceaccounts/token`, or the path for requests outside the resource API.
    pub resource: String,
    pub namespace: Option<String>,
    /// The raw query string.
    pub query: String,
    pub status: u16,
}

pub(crate) struct ServerState {
    pub(crate) pods: BTreeMap<(String, String), Arc<Pod>>,
    service_accounts: BTreeMap<(String, String), String>,
    nodes: BTreeMap<String, String>,
    pub(crate) resource_version: u64,
    /// Events with a resource version above `compacted_through`, oldest first.
    history: VecDeque<Arc<StoredEvent>>,
    /// Watches may resume from this resource version or later; older ones get 410 Expired.
    pub(crate) compacted_through: u64,
    pub(crate) events: broadcast::Sender<Arc<StoredEvent>>,
    pub(crate) auth: Authenticator,
    pub(crate) unavailable: bool,
    pub(crate) requests: Vec<RecordedRequest>,
    pub(crate) issuer: String,
    pub(crate) signing_key: SigningKey,
}

impl ServerState {
    pub(crate) fn new(issuer: String) -> ServerState {
        ServerState {
            pods: BTreeMap::new(),
            service_accounts: BTreeMap::new(),
            nodes: BTreeMap::new(),
            resource_version: 1,
            history: VecDeque::new(),
            compacted_through: 1,
            events: broadcast::channel(WATCH_BUFFER).0,
            auth: Authenticator::default(),
            unavailable: false,
            requests: Vec::new(),
            issuer,
            signing_key: SigningKey::load(),
        }
    }

    /// Creates or replaces a pod, filling what the API server fills: namespace `default`,
    /// `uid`, `creationTimestamp`, service account `default`, and `resourceVersion`.
    pub(crate) fn apply_pod(&mut self, mut pod: Pod) -> Result<Pod, ApiError> {
        let name = pod
            .metadata
            .name
            .clone()
            .filter(|name| !name.is_empty())
            .ok_or_else(|| ApiError::invalid("metadata.name: Required value: name is required"))?;
        let namespace = pod
            .metadata
            .namespace
            .get_or_insert_with(|| "default".to_owned())
            .clone();
        let key = (namespace.clone(), name);
        let previous = self.pods.get(&key).cloned();

        let metadata = &mut pod.metadata;
        if metadata.uid.is_none() {
            metadata.uid = previous
                .as_ref()
                .and_then(|p| p.metadata.uid.clone())
                .or_else(|| Some(ids::uuid()));
        }
        if metadata.creation_timestamp.is_none() {
            metadata.creation_timestamp = previous
                .as_ref()
                .and_then(|p| p.metadata.creation_timestamp.clone())
                .or_else(|| Some(time_at(SystemTime::now())));
        }
        let spec = pod.spec.get_or_insert_with(Default::default);
        let account = spec
            .service_account_name
            .get_or_insert_with(|| "default".to_owned())
            .clone();
        if let Some(node) = spec.node_name.clone() {
            self.nodes.entry(node).or_insert_with(ids::uuid);
        }
        self.service_accounts
            .entry((namespace, account))
            .or_insert_with(ids::uuid);

        self.resource_version += 1;
        pod.metadata.resource_version = Some(self.resource_version.to_string());
        let pod = Arc::new(pod);
        self.pods.insert(key, pod.clone());
        let event_type = if previous.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        self.record(event_type, pod.clone(), previous);
        Ok(Pod::clone(&pod))
    }

    /// Deletes a pod; the `DELETED` event carries the deletion's resource version.
    pub(crate) fn delete_pod(&mut self, namespace: &str, name: &str) -> Option<Pod> {
        let removed = self.pods.remove(&(namespace.to_owned(), name.to_owned()))?;
        self.resource_version += 1;
        let mut pod = Pod::clone(&removed);
        pod.metadata.resource_version = Some(self.resource_version.to_string());
        let pod = Arc::new(pod);
        self.record(EventType::Deleted, pod.clone(), Some(removed));
        Some(Pod::clone(&pod))
    }

    fn record(&mut self, event_type: EventType, pod: Arc<Pod>, previous: Option<Arc<Pod>>) {
        let event = Arc::new(StoredEvent {
            event_type,
            resource_version: self.resource_version,
            pod,
            previous,
        });
        self.history.push_back(event.clone());
        // A send without receivers fails harmlessly, because no watch is open.
        let _ = self.events.send(event);
    }

    /// Drops the retained history up to the current resource version, as etcd compaction
    /// does; watches that resume from an earlier version then get 410 Expired.
    pub(crate) fn compact(&mut self) {
        self.history.clear();
        self.compacted_through = self.resource_version;
    }

    /// Returns the events after `resource_version` and a receiver for later ones, taken
    /// together so no event falls between them.
    pub(crate) fn watch_from(&self, resource_version: u64) -> Result<WatchStart, ApiError> {
        if resource_version < self.compacted_through {
            return Err(ApiError::expired(resource_version, self.compacted_through));
        }
        if resource_version > self.resource_version {
            return Err(ApiError::too_large_resource_version(
                resource_version,
                self.resource_version,
            ));
        }
        let replay = self
            .history
            .iter()
            .filter(|event| event.resource_version > resource_version)
            .cloned()
            .collect();
        Ok((replay, self.events.subscribe()))
    }

    /// Issues a service account token bound to a pod, as `serviceaccounts/token` does when
    /// `boundObjectRef` names a pod and as the kubelet projects into the pod.
    pub(crate) fn issue_pod_token(
        &self,
        request: &PodTokenRequest<'_>,
        now: SystemTime,
    ) -> Result<String, ApiError> {
        let namespace = request.namespace;
        let pod = self
            .pods
            .get(&(namespace.to_owned(), request.pod_name.to_owned()))
            .ok_or_else(|| ApiError::not_found("pods", request.pod_name))?;
        let pod_uid = pod.metadata.uid.clone().unwrap_or_default();
        if let Some(expected) = request.pod_uid.filter(|uid| !uid.is_empty()) {
            if expected != pod_uid {
                return Err(ApiError {
                    code: 409,
                    reason: "Conflict",
                    message: format!(
                        "the UID in the bound object reference ({expected}) does not match the \
                         UID in record. The object might have been deleted and then recreated"
                    ),
                    details: None,
                });
            }
        }
        let spec = pod.spec.as_ref();
        let pod_account = spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".to_owned());
        let account = request.service_account.unwrap_or(&pod_account);
        if account != pod_account {
            return Err(ApiError::bad_request(format!(
                "cannot bind token for serviceaccount \"{account}\" to pod running with \
                 different serviceaccount name."
            )));
        }
        let account_uid = self
            .service_accounts
            .get(&(namespace.to_owned(), account.to_owned()))
            .cloned()
            .ok_or_else(|| ApiError::not_found("serviceaccounts", account))?;
        let node = spec.and_then(|s| s.node_name.clone()).map(|name| {
            let uid = self.nodes.get(&name).cloned().unwrap_or_default();
            (name, uid)
        });
        let binding = TokenBinding {
            namespace: namespace.to_owned(),
            service_account: (account.to_owned(), account_uid),
            pod: Some((request.pod_name.to_owned(), pod_uid)),
            node,
        };
        let claims = jwt::projected_claims(
            &self.issuer,
            request.audiences,
            &binding,
            now,
            request.lifetime,
        );
        Ok(self.signing_key.sign(&claims))
    }

    pub(crate) fn service_account_exists(&self, namespace: &str, name: &str) -> bool {
        self.service_accounts
            .contains_key(&(namespace.to_owned(), name.to_owned()))
    }

    pub(crate) fn add_service_account(&mut self, namespace: &str, name: &str) {
        self.service_accounts
            .entry((namespace.to_owned(), name.to_owned()))
            .or_insert_with(ids::uuid);
    }

    pub(crate) fn node_uid(&self, name: &str) -> Option<String> {
        self.nodes.get(name).cloned()
    }
}

/// Converts a system time to a `Time`, at whole seconds as the API server stores it.
pub(crate) fn time_at(at: SystemTime) -> Time {
    let seconds = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let seconds = i64::try_from(seconds).unwrap_or(i64::MAX);
    Time(Timestamp::from_second(seconds).unwrap_or(Timestamp::MAX))
}

/// A token request bound to a pod.
pub(crate) struct PodTokenRequest<'a> {
    pub(crate) namespace: &'a str,
    /// `None` takes the pod's own service account.
    pub(crate) service_account: Option<&'a str>,
    pub(crate) pod_name: &'a str,
    /// When set, must equal the pod's UID.
    pub(crate) pod_uid: Option<&'a str>,
    pub(crate) audiences: &'a [String],
    pub(crate) lifetime: Duration,
}

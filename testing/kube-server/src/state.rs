//! The server's objects and their history: pods, Secrets, service accounts, nodes, the global
//! resource version, retained watch events, registered tokens and request counts.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::ByteString;
use tokio::sync::broadcast;

use crate::auth::Authenticator;
use crate::ids;
use crate::jwt::{self, SigningKey, TokenBinding};
use crate::object::{Kind, Object};
use crate::status::ApiError;

/// The API server's limit on the total size of a Secret's data: 1 MiB.
const MAX_SECRET_SIZE: usize = 1024 * 1024;

/// Watch events buffered per watcher before a slow one is disconnected.
const WATCH_BUFFER: usize = 1024;

/// Change to an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EventType {
    Added,
    Modified,
    Deleted,
}

/// One change to an object, kept for watches that resume from an earlier resource version.
#[derive(Debug)]
pub(crate) struct StoredEvent {
    pub(crate) event_type: EventType,
    pub(crate) resource_version: u64,
    pub(crate) object: Object,
    /// The object before a modification, so a filtered watch can tell an object that moved
    /// into or out of its selector (the API server sends those as `ADDED` and `DELETED`).
    pub(crate) previous: Option<Object>,
}

/// Retained events to replay and a receiver of later ones.
pub(crate) type WatchStart = (Vec<Arc<StoredEvent>>, broadcast::Receiver<Arc<StoredEvent>>);

/// One request as it arrived, with the verb the API server's request info would give it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedRequest {
    /// `list`, `watch`, `get`, `create`, or the lower-case HTTP method for other paths.
    pub verb: String,
    /// `pods`, `secrets`, `serviceaccounts/token`, or the path for requests outside the
    /// resource API.
    pub resource: String,
    pub namespace: Option<String>,
    /// The raw query string.
    pub query: String,
    pub status: u16,
}

pub(crate) struct ServerState {
    pub(crate) pods: BTreeMap<(String, String), Arc<Pod>>,
    pub(crate) secrets: BTreeMap<(String, String), Arc<Secret>>,
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
            secrets: BTreeMap::new(),
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
        self.record(
            event_type,
            Object::Pod(pod.clone()),
            previous.map(Object::Pod),
        );
        Ok(Pod::clone(&pod))
    }

    /// Creates or replaces a Secret as a create or update request would: `stringData` is
    /// merged into `data` (its keys win) and dropped, `type` defaults to `Opaque`, keys and
    /// the total size are validated, and an immutable Secret keeps its data.
    pub(crate) fn apply_secret(&mut self, mut secret: Secret) -> Result<Secret, ApiError> {
        let name = secret
            .metadata
            .name
            .clone()
            .filter(|name| !name.is_empty())
            .ok_or_else(|| ApiError::invalid("metadata.name: Required value: name is required"))?;
        let namespace = secret
            .metadata
            .namespace
            .get_or_insert_with(|| "default".to_owned())
            .clone();
        let key = (namespace, name.clone());
        let previous = self.secrets.get(&key).cloned();

        if let Some(string_data) = secret.string_data.take() {
            let data = secret.data.get_or_insert_with(BTreeMap::new);
            for (data_key, value) in string_data {
                data.insert(data_key, ByteString(value.into_bytes()));
            }
        }
        let data = secret.data.get_or_insert_with(BTreeMap::new);
        let invalid = |message: String| ApiError {
            details: Some(("secrets".to_owned(), Some(name.clone()))),
            ..ApiError::invalid(format!("Secret \"{name}\" is invalid: {message}"))
        };
        for data_key in data.keys() {
            if !is_config_map_key(data_key) {
                return Err(invalid(format!(
                    "data[{data_key}]: Invalid value: \"{data_key}\": a valid config key must \
                     consist of alphanumeric characters, '-', '_' or '.'"
                )));
            }
        }
        let size: usize = data.iter().map(|(k, v)| k.len() + v.0.len()).sum();
        if size > MAX_SECRET_SIZE {
            return Err(invalid(format!(
                "data: Too long: must have at most {MAX_SECRET_SIZE} bytes"
            )));
        }
        if let Some(previous) = &previous {
            if previous.immutable == Some(true) && previous.data.as_ref() != secret.data.as_ref() {
                return Err(invalid(
                    "data: Forbidden: field is immutable when `immutable` is set".to_owned(),
                ));
            }
        }
        secret.type_.get_or_insert_with(|| "Opaque".to_owned());
        let metadata = &mut secret.metadata;
        metadata.uid = previous
            .as_ref()
            .and_then(|s| s.metadata.uid.clone())
            .or_else(|| Some(ids::uuid()));
        metadata.creation_timestamp = previous
            .as_ref()
            .and_then(|s| s.metadata.creation_timestamp.clone())
            .or_else(|| Some(time_at(SystemTime::now())));

        self.resource_version += 1;
        secret.metadata.resource_version = Some(self.resource_version.to_string());
        let secret = Arc::new(secret);
        self.secrets.insert(key, secret.clone());
        let event_type = if previous.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        let previous = previous.map(Object::Secret);
        self.record(event_type, Object::Secret(secret.clone()), previous);
        Ok(Secret::clone(&secret))
    }

    /// Deletes a Secret; the `DELETED` event carries the deletion's resource version.
    pub(crate) fn delete_secret(&mut self, namespace: &str, name: &str) -> Option<Secret> {
        let removed = self
            .secrets
            .remove(&(namespace.to_owned(), name.to_owned()))?;
        self.resource_version += 1;
        let mut secret = Secret::clone(&removed);
        secret.metadata.resource_version = Some(self.resource_version.to_string());
        let secret = Arc::new(secret);
        let previous = Some(Object::Secret(removed));
        self.record(EventType::Deleted, Object::Secret(secret.clone()), previous);
        Some(Secret::clone(&secret))
    }

    /// Returns the stored objects of `kind`.
    pub(crate) fn objects(&self, kind: Kind) -> Vec<Object> {
        match kind {
            Kind::Pod => self.pods.values().cloned().map(Object::Pod).collect(),
            Kind::Secret => self.secrets.values().cloned().map(Object::Secret).collect(),
        }
    }

    /// Returns one stored object of `kind`.
    pub(crate) fn object(&self, kind: Kind, namespace: &str, name: &str) -> Option<Object> {
        let key = (namespace.to_owned(), name.to_owned());
        match kind {
            Kind::Pod => self.pods.get(&key).cloned().map(Object::Pod),
            Kind::Secret => self.secrets.get(&key).cloned().map(Object::Secret),
        }
    }

    /// Deletes a pod; the `DELETED` event carries the deletion's resource version.
    pub(crate) fn delete_pod(&mut self, namespace: &str, name: &str) -> Option<Pod> {
        let removed = self.pods.remove(&(namespace.to_owned(), name.to_owned()))?;
        self.resource_version += 1;
        let mut pod = Pod::clone(&removed);
        pod.metadata.resource_version = Some(self.resource_version.to_string());
        let pod = Arc::new(pod);
        let previous = Some(Object::Pod(removed));
        self.record(EventType::Deleted, Object::Pod(pod.clone()), previous);
        Some(Pod::clone(&pod))
    }

    fn record(&mut self, event_type: EventType, object: Object, previous: Option<Object>) {
        let event = Arc::new(StoredEvent {
            event_type,
            resource_version: self.resource_version,
            object,
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
                    causes: &[],
                    retry_after_seconds: None,
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

    /// Authenticates `token` and authorizes `verb` on `resource`; returns the user name.
    ///
    /// A registered token is checked against its rules. Any other token that carries this
    /// server's signature is a service account token. As for the API server's token
    /// authenticator, it must be valid at `now` and carry the API server's audience (its
    /// issuer). A token bound to a pod must name a pod that still exists with that UID. The
    /// service account's grants then decide.
    pub(crate) fn authorize(
        &self,
        token: Option<&str>,
        verb: &str,
        resource: &str,
        namespace: Option<&str>,
        now: SystemTime,
    ) -> Result<String, ApiError> {
        let Some(token) = token.filter(|token| !self.auth.is_registered(token)) else {
            return self.auth.authorize(token, verb, resource, namespace);
        };
        let Some(claims) = self.signing_key.verify(token) else {
            return Err(ApiError::unauthorized());
        };
        let (account_namespace, account) = self
            .service_account_of(&claims, now)
            .ok_or_else(ApiError::unauthorized)?;
        self.auth.authorize_service_account(
            (&account_namespace, &account),
            verb,
            resource,
            namespace,
        )
    }

    /// Returns the service account that verified `claims` name, when they are valid at `now`.
    fn service_account_of(
        &self,
        claims: &serde_json::Value,
        now: SystemTime,
    ) -> Option<(String, String)> {
        let now = now.duration_since(UNIX_EPOCH).ok()?.as_secs();
        let expires = claims["exp"].as_u64()?;
        let not_before = claims["nbf"].as_u64().unwrap_or(0);
        if now >= expires || now < not_before {
            return None;
        }
        let audiences = match &claims["aud"] {
            serde_json::Value::String(audience) => vec![audience.as_str()],
            serde_json::Value::Array(items) => items.iter().filter_map(|a| a.as_str()).collect(),
            _ => return None,
        };
        if !audiences.contains(&self.issuer.as_str()) {
            return None;
        }
        let kubernetes = &claims["kubernetes.io"];
        let namespace = kubernetes["namespace"].as_str()?;
        let account = kubernetes["serviceaccount"]["name"].as_str()?;
        if !self.service_account_exists(namespace, account) {
            return None;
        }
        if let Some(pod) = kubernetes.get("pod") {
            let name = pod["name"].as_str()?;
            let uid = pod["uid"].as_str()?;
            let stored = self.pods.get(&(namespace.to_owned(), name.to_owned()))?;
            if stored.metadata.uid.as_deref() != Some(uid) {
                return None;
            }
        }
        Some((namespace.to_owned(), account.to_owned()))
    }
}

/// Returns whether `key` is a valid key of a ConfigMap's or Secret's `data`: at most 253
/// characters out of letters, digits, `-`, `_` and `.`, and not `.` or `..`.
fn is_config_map_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 253
        && key != "."
        && key != ".."
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
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

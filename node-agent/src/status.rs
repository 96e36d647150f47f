//! The agent's description of itself, returned for a status request.

use std::path::PathBuf;
use std::time::Instant;

use envproxy_proto::frame::MAX_PAYLOAD_LEN;
use serde::{Deserialize, Serialize};

use crate::handler::Backends;
use crate::http_backend::HttpStatus;
use crate::kube_secrets::KubeStatus;
use crate::vault::VaultStatus;

/// The JSON payload of a status response. Contains key names, never values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub version: String,
    pub mode: String,
    pub pid: u32,
    pub uptime_secs: u64,
    pub socket: PathBuf,
    /// The default backend, which serves `envproxy:` references and bare names, or `None` when
    /// the agent has none (it serves Vault only).
    #[serde(default)]
    pub backend: Option<BackendInfo>,
    /// The HTTP secrets backend, when configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpInfo>,
    /// The Vault backend, when configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault: Option<VaultInfo>,
    /// Kubernetes Secrets, for `k8s:` references and a default Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubeInfo>,
    /// Key names of the secrets file, sorted.
    pub keys: Vec<String>,
    /// Set when `keys` was cut short to fit the response frame.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keys_truncated: bool,
}

/// The `backend` object of [`AgentStatus`]: the default backend's kind, the fields that name
/// its source, and its keys.
///
/// `type` is `file`, `http` or `kubernetes`. A secrets file has `path` and the reload fields;
/// the HTTP API has `url`; a Kubernetes Secret has `namespace` and `secret`. The fields of the
/// other kinds are left out. An `envproxy` built before the `http` and `kubernetes` kinds
/// existed requires `path` and cannot read their status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendInfo {
    #[serde(rename = "type")]
    pub kind: String,
    /// The secrets file (`file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Base URL of the API (`http`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Namespace of the Secret (`kubernetes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name of the Secret (`kubernetes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Number of keys the backend holds; 0 when it cannot list them.
    pub keys_loaded: usize,
    /// Whether [`AgentStatus::keys`] lists the backend's keys. `false` for the HTTP API, which
    /// has no listing, and for a Kubernetes Secret not read yet or absent; a program under
    /// `envproxy run` then asks the agent for names absent from its environment
    /// (`ENVPROXY_LOOKUP_UNSET=1`).
    #[serde(default = "keys_listed_default")]
    pub keys_listed: bool,
    /// Reason the latest change of the secrets file could not be loaded, or `None` once a load
    /// succeeds (always `None` for the other kinds).
    pub last_reload_error: Option<String>,
    /// Unix time in seconds of the last successful load of the secrets file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reload_unix: Option<u64>,
}

/// Agents that send no `keys_listed` serve a secrets file, whose keys they list.
fn keys_listed_default() -> bool {
    true
}

impl BackendInfo {
    /// A backend of kind `kind` without any source field set.
    fn of_kind(kind: &str) -> BackendInfo {
        BackendInfo {
            kind: kind.to_string(),
            path: None,
            url: None,
            namespace: None,
            secret: None,
            keys_loaded: 0,
            keys_listed: false,
            last_reload_error: None,
            last_reload_unix: None,
        }
    }
}

/// The `vault` object of [`AgentStatus`]. Contains no token and no value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaultInfo {
    pub address: String,
    pub namespace: Option<String>,
    pub auth_method: String,
    /// Whether the agent holds a token (a login or lookup succeeded).
    pub logged_in: bool,
    /// Seconds until the token expires; `None` for a token without expiry or before login.
    pub token_ttl_secs: Option<u64>,
    pub token_renewable: bool,
    pub cache_entries: u64,
    /// Requests served from the cache.
    pub cache_hits: u64,
    /// Requests that read from Vault.
    pub cache_misses: u64,
    /// Requests served a value past its cache TTL because Vault was unavailable.
    pub stale_served: u64,
    /// Leases of dynamic secrets that the agent renews or waits out.
    pub live_leases: usize,
    /// The latest failed Vault read, or `None` when none failed.
    pub last_error: Option<String>,
}

/// The `http` object of [`AgentStatus`]. Contains no token and no value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpInfo {
    /// Base URL of the API.
    pub url: String,
    /// Source of the token: `auth_token` or `auth_token_file <path>`.
    pub auth: String,
    pub cache_entries: u64,
    /// Requests served from the cache.
    pub cache_hits: u64,
    /// Requests sent to the API.
    pub cache_misses: u64,
    /// Requests served a value past its cache TTL because the API was unavailable.
    pub stale_served: u64,
    /// The latest failed request to the API, or `None` when none failed.
    pub last_error: Option<String>,
}

/// The `kubernetes` object of [`AgentStatus`]. Contains no token and no value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubeInfo {
    /// The API server's URL, or `None` before the first `k8s:` reference built the client.
    pub server: Option<String>,
    /// Whose credentials reads use: `kubeconfig` (local mode) or `calling pod` (node mode).
    pub credentials: String,
    /// `namespace/name` of the Secret that serves `envproxy:` references, when configured.
    pub default_secret: Option<String>,
    /// Whether the watch of the default Secret has delivered its first list.
    pub watch_synced: bool,
    /// Cached Secrets, one per (identity, namespace, name).
    pub cache_entries: u64,
    /// Requests served from the cache.
    pub cache_hits: u64,
    /// Requests that read from the API server.
    pub cache_misses: u64,
    /// Requests served a value past its cache TTL because the API server was unavailable.
    pub stale_served: u64,
    /// The latest failed read, or `None` when none failed.
    pub last_error: Option<String>,
}

impl From<KubeStatus> for KubeInfo {
    fn from(status: KubeStatus) -> KubeInfo {
        KubeInfo {
            server: status.server,
            credentials: status.credentials.to_string(),
            default_secret: status.default_secret,
            watch_synced: status.watch_synced,
            cache_entries: status.cache_entries,
            cache_hits: status.cache_hits,
            cache_misses: status.cache_misses,
            stale_served: status.stale_served,
            last_error: status.last_error,
        }
    }
}

impl From<HttpStatus> for HttpInfo {
    fn from(status: HttpStatus) -> HttpInfo {
        HttpInfo {
            url: status.url,
            auth: status.auth,
            cache_entries: status.cache_entries,
            cache_hits: status.cache_hits,
            cache_misses: status.cache_misses,
            stale_served: status.stale_served,
            last_error: status.last_error,
        }
    }
}

impl From<VaultStatus> for VaultInfo {
    fn from(status: VaultStatus) -> VaultInfo {
        VaultInfo {
            address: status.address,
            namespace: status.namespace,
            auth_method: status.auth_method,
            logged_in: status.logged_in,
            token_ttl_secs: status.token_ttl_secs,
            token_renewable: status.token_renewable,
            cache_entries: status.cache_entries,
            cache_hits: status.cache_hits,
            cache_misses: status.cache_misses,
            stale_served: status.stale_served,
            live_leases: status.live_leases,
            last_error: status.last_error,
        }
    }
}

/// Builds status payloads for one running agent.
pub(crate) struct StatusReporter {
    socket: PathBuf,
    started: Instant,
    backends: Backends,
    /// `"local"` or `"node"`.
    mode: &'static str,
}

impl StatusReporter {
    /// Creates the reporter of an agent in `mode` (`"local"` or `"node"`) listening on `socket`.
    pub(crate) fn new(socket: PathBuf, backends: Backends, mode: &'static str) -> StatusReporter {
        StatusReporter {
            socket,
            mode,
            started: Instant::now(),
            backends,
        }
    }

    pub(crate) fn status(&self) -> AgentStatus {
        let (backend, keys) = self.default_backend();
        AgentStatus {
            version: env!("CARGO_PKG_VERSION").to_string(),
            mode: self.mode.to_string(),
            pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs(),
            socket: self.socket.clone(),
            backend,
            http: self
                .backends
                .http
                .as_ref()
                .map(|http| HttpInfo::from(http.status())),
            vault: self
                .backends
                .vault
                .as_ref()
                .map(|vault| VaultInfo::from(vault.status())),
            kubernetes: self
                .backends
                .kube
                .as_ref()
                .map(|kube| KubeInfo::from(kube.status())),
            keys,
            keys_truncated: false,
        }
    }

    /// Describes the backend that serves `envproxy:` references and bare names, in the order
    /// the handler picks it (the HTTP API, a Kubernetes Secret, the secrets file), with its
    /// key names, sorted.
    fn default_backend(&self) -> (Option<BackendInfo>, Vec<String>) {
        if let Some(http) = &self.backends.http {
            let backend = BackendInfo {
                url: Some(http.status().url),
                ..BackendInfo::of_kind("http")
            };
            return (Some(backend), Vec::new());
        }
        if let Some(kube) = self
            .backends
            .kube
            .as_ref()
            .filter(|kube| kube.has_default_secret())
        {
            let status = kube.status();
            let (namespace, secret) = status
                .default_secret
                .as_deref()
                .and_then(|secret| secret.split_once('/'))
                .map(|(namespace, secret)| (namespace.to_string(), secret.to_string()))
                .unzip();
            let keys = kube.cached_default_key_names();
            let backend = BackendInfo {
                namespace,
                secret,
                keys_loaded: keys.as_ref().map_or(0, Vec::len),
                keys_listed: keys.is_some(),
                ..BackendInfo::of_kind("kubernetes")
            };
            return (Some(backend), keys.unwrap_or_default());
        }
        match &self.backends.file {
            Some(file) => {
                let status = file.status();
                let backend = BackendInfo {
                    path: Some(status.path),
                    keys_loaded: status.keys_loaded,
                    keys_listed: true,
                    last_reload_error: status.last_reload_error,
                    last_reload_unix: Some(status.last_reload_unix),
                    ..BackendInfo::of_kind("file")
                };
                (Some(backend), file.key_names())
            }
            None => (None, Vec::new()),
        }
    }

    /// Returns the status as JSON that fits in one response frame.
    pub(crate) fn payload(&self) -> Vec<u8> {
        encode_within_frame(self.status())
    }
}

/// Serializes `status`, dropping key names from the end until the JSON fits in a response.
fn encode_within_frame(mut status: AgentStatus) -> Vec<u8> {
    loop {
        let json = serde_json::to_vec(&status).expect("bug: status serialization cannot fail");
        if json.len() <= MAX_PAYLOAD_LEN || status.keys.is_empty() {
            return json;
        }
        // Each dropped name saves at least its own length plus quotes and a comma.
        let mut excess = json.len() - MAX_PAYLOAD_LEN;
        while excess > 0 {
            let Some(name) = status.keys.pop() else {
                break;
            };
            excess = excess.saturating_sub(name.len() + 3);
        }
        status.keys_truncated = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_with_keys(keys: Vec<String>) -> AgentStatus {
        AgentStatus {
            version: "0.1.0".into(),
            mode: "local".into(),
            pid: 1,
            uptime_secs: 2,
            socket: "/run/agent.sock".into(),
            backend: Some(BackendInfo {
                path: Some("/etc/secrets.json".into()),
                keys_loaded: keys.len(),
                keys_listed: true,
                last_reload_unix: Some(3),
                ..BackendInfo::of_kind("file")
            }),
            http: None,
            vault: None,
            kubernetes: None,
            keys,
            keys_truncated: false,
        }
    }

    #[test]
    fn json_field_names() {
        let json: serde_json::Value =
            serde_json::from_slice(&encode_within_frame(status_with_keys(vec!["A".into()])))
                .unwrap();
        assert_eq!(json["mode"], "local");
        assert_eq!(json["backend"]["type"], "file");
        assert_eq!(
            json["backend"]["last_reload_error"],
            serde_json::Value::Null
        );
        assert_eq!(json["keys"], serde_json::json!(["A"]));
        assert!(json.get("keys_truncated").is_none());
        assert!(json.get("vault").is_none());
        assert!(json.get("http").is_none());
    }

    #[test]
    fn http_object_field_names() {
        let mut status = status_with_keys(Vec::new());
        status.backend = None;
        status.http = Some(HttpInfo {
            url: "https://secrets.internal".into(),
            auth: "auth_token_file /run/token".into(),
            cache_entries: 3,
            cache_hits: 9,
            cache_misses: 3,
            stale_served: 1,
            last_error: Some("the HTTP secrets API failed (HTTP 503 for GET ...)".into()),
        });
        let json: serde_json::Value =
            serde_json::from_slice(&encode_within_frame(status.clone())).unwrap();
        assert_eq!(json["http"]["url"], "https://secrets.internal");
        assert_eq!(json["http"]["auth"], "auth_token_file /run/token");
        assert_eq!(json["http"]["cache_entries"], 3);
        assert_eq!(json["http"]["cache_hits"], 9);
        assert_eq!(json["http"]["cache_misses"], 3);
        assert_eq!(json["http"]["stale_served"], 1);
        assert!(json["http"]["last_error"]
            .as_str()
            .unwrap()
            .contains("HTTP 503"));
        let decoded: AgentStatus = serde_json::from_value(json).unwrap();
        assert_eq!(decoded, status);
    }

    #[test]
    fn default_backend_objects_name_their_source() {
        let mut status = status_with_keys(Vec::new());
        status.backend = Some(BackendInfo {
            url: Some("https://secrets.internal".into()),
            ..BackendInfo::of_kind("http")
        });
        let json: serde_json::Value =
            serde_json::from_slice(&encode_within_frame(status.clone())).unwrap();
        assert_eq!(
            json["backend"],
            serde_json::json!({
                "type": "http",
                "url": "https://secrets.internal",
                "keys_loaded": 0,
                "keys_listed": false,
                "last_reload_error": null,
            })
        );
        assert_eq!(serde_json::from_value::<AgentStatus>(json).unwrap(), status);

        let mut status = status_with_keys(vec!["API_KEY".into(), "DB_URL".into()]);
        status.backend = Some(BackendInfo {
            namespace: Some("shop".into()),
            secret: Some("app-env".into()),
            keys_loaded: 2,
            keys_listed: true,
            ..BackendInfo::of_kind("kubernetes")
        });
        let json: serde_json::Value =
            serde_json::from_slice(&encode_within_frame(status.clone())).unwrap();
        assert_eq!(json["backend"]["type"], "kubernetes");
        assert_eq!(json["backend"]["namespace"], "shop");
        assert_eq!(json["backend"]["secret"], "app-env");
        assert_eq!(json["backend"]["keys_loaded"], 2);
        assert!(json["backend"].get("path").is_none());
        assert_eq!(json["keys"], serde_json::json!(["API_KEY", "DB_URL"]));
        assert_eq!(serde_json::from_value::<AgentStatus>(json).unwrap(), status);
    }

    #[test]
    fn file_backend_keeps_its_fields() {
        let json: serde_json::Value =
            serde_json::from_slice(&encode_within_frame(status_with_keys(vec!["A".into()])))
                .unwrap();
        assert_eq!(
            json["backend"],
            serde_json::json!({
                "type": "file",
                "path": "/etc/secrets.json",
                "keys_loaded": 1,
                "keys_listed": true,
                "last_reload_error": null,
                "last_reload_unix": 3,
            })
        );
        // An agent that predates `keys_listed` serves a secrets file, whose keys it lists.
        let mut older = json;
        older["backend"]
            .as_object_mut()
            .unwrap()
            .remove("keys_listed");
        let decoded: AgentStatus = serde_json::from_value(older).unwrap();
        assert!(decoded.backend.unwrap().keys_listed);
    }

    #[test]
    fn vault_object_field_names() {
        let mut status = status_with_keys(Vec::new());
        status.backend = None;
        status.vault = Some(VaultInfo {
            address: "http://127.0.0.1:8200".into(),
            namespace: Some("team-a".into()),
            auth_method: "token".into(),
            logged_in: true,
            token_ttl_secs: Some(3500),
            token_renewable: true,
            cache_entries: 2,
            cache_hits: 10,
            cache_misses: 2,
            stale_served: 1,
            live_leases: 0,
            last_error: None,
        });
        let json: serde_json::Value =
            serde_json::from_slice(&encode_within_frame(status.clone())).unwrap();
        assert_eq!(json["backend"], serde_json::Value::Null);
        assert_eq!(json["vault"]["address"], "http://127.0.0.1:8200");
        assert_eq!(json["vault"]["namespace"], "team-a");
        assert_eq!(json["vault"]["auth_method"], "token");
        assert_eq!(json["vault"]["token_ttl_secs"], 3500);
        assert_eq!(json["vault"]["token_renewable"], true);
        assert_eq!(json["vault"]["cache_entries"], 2);
        assert_eq!(json["vault"]["cache_hits"], 10);
        assert_eq!(json["vault"]["cache_misses"], 2);
        assert_eq!(json["vault"]["stale_served"], 1);
        assert_eq!(json["vault"]["last_error"], serde_json::Value::Null);
        let decoded: AgentStatus = serde_json::from_value(json).unwrap();
        assert_eq!(decoded, status);
    }

    #[test]
    fn many_keys_are_truncated_to_fit() {
        let keys: Vec<String> = (0..20_000).map(|i| format!("KEY_NUMBER_{i:06}")).collect();
        let json = encode_within_frame(status_with_keys(keys));
        assert!(json.len() <= MAX_PAYLOAD_LEN, "{}", json.len());
        let status: AgentStatus = serde_json::from_slice(&json).unwrap();
        assert!(status.keys_truncated);
        assert!(status.keys.len() > 1000, "{}", status.keys.len());
        assert_eq!(status.backend.unwrap().keys_loaded, 20_000);
        assert_eq!(status.keys[0], "KEY_NUMBER_000000");
    }
}

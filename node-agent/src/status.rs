//! The agent's description of itself, returned for a status request.

use std::path::PathBuf;
use std::time::Instant;

use envproxy_proto::frame::MAX_PAYLOAD_LEN;
use serde::{Deserialize, Serialize};

use crate::backend::FileBackend;

/// The JSON payload of a status response. Contains key names, never values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub version: String,
    pub mode: String,
    pub pid: u32,
    pub uptime_secs: u64,
    pub socket: PathBuf,
    pub backend: BackendInfo,
    /// Key names of the secrets file, sorted.
    pub keys: Vec<String>,
    /// Set when `keys` was cut short to fit the response frame.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keys_truncated: bool,
}

/// The `backend` object of [`AgentStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendInfo {
    #[serde(rename = "type")]
    pub kind: String,
    pub path: PathBuf,
    pub keys_loaded: usize,
    /// Reason the latest change of the secrets file could not be loaded, or `None` once a load
    /// succeeds.
    pub last_reload_error: Option<String>,
    /// Unix time in seconds of the last successful load.
    pub last_reload_unix: u64,
}

/// Builds status payloads for one running agent.
pub(crate) struct StatusReporter {
    socket: PathBuf,
    started: Instant,
    backend: FileBackend,
}

impl StatusReporter {
    pub(crate) fn new(socket: PathBuf, backend: FileBackend) -> StatusReporter {
        StatusReporter {
            socket,
            started: Instant::now(),
            backend,
        }
    }

    pub(crate) fn status(&self) -> AgentStatus {
        let backend = self.backend.status();
        AgentStatus {
            version: env!("CARGO_PKG_VERSION").to_string(),
            mode: "local".to_string(),
            pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs(),
            socket: self.socket.clone(),
            backend: BackendInfo {
                kind: "file".to_string(),
                path: backend.path,
                keys_loaded: backend.keys_loaded,
                last_reload_error: backend.last_reload_error,
                last_reload_unix: backend.last_reload_unix,
            },
            keys: self.backend.key_names(),
            keys_truncated: false,
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
            backend: BackendInfo {
                kind: "file".into(),
                path: "/etc/secrets.json".into(),
                keys_loaded: keys.len(),
                last_reload_error: None,
                last_reload_unix: 3,
            },
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
    }

    #[test]
    fn many_keys_are_truncated_to_fit() {
        let keys: Vec<String> = (0..20_000).map(|i| format!("KEY_NUMBER_{i:06}")).collect();
        let json = encode_within_frame(status_with_keys(keys));
        assert!(json.len() <= MAX_PAYLOAD_LEN, "{}", json.len());
        let status: AgentStatus = serde_json::from_slice(&json).unwrap();
        assert!(status.keys_truncated);
        assert!(status.keys.len() > 1000, "{}", status.keys.len());
        assert_eq!(status.backend.keys_loaded, 20_000);
        assert_eq!(status.keys[0], "KEY_NUMBER_000000");
    }
}

//! Secret reads: the HTTP request for a reference, and the response turned into values.
//!
//! KV v2 (`<mount>/data/<path>`, optionally `?version=n`) returns the keys in `data.data`, and
//! a deleted or destroyed version as a 404 whose body still contains `data.metadata`. Any other
//! path (KV v1, dynamic secrets) returns the keys in `data`, and a dynamic secret also returns
//! a non-empty `lease_id` with `lease_duration` and `renewable`.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use envproxy_proto::SecretBytes;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::error::VaultError;
use super::secret::SecretText;
use super::transport::{error_messages, Transport};

/// One secret read: the path after `/v1/` and, for KV v2, the version.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ReadTarget {
    pub path: String,
    pub version: Option<u64>,
    pub kv2: bool,
}

impl fmt::Display for ReadTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.version {
            Some(version) => write!(f, "{} (version {version})", self.path),
            None => f.write_str(&self.path),
        }
    }
}

/// All keys of one read with their values as text.
pub(crate) struct SecretData {
    values: BTreeMap<String, SecretBytes>,
}

impl SecretData {
    pub(crate) fn get(&self, key: &str) -> Option<&SecretBytes> {
        self.values.get(key)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.values.len()
    }
}

impl fmt::Debug for SecretData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretData")
            .field("keys", &self.values.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// The lease of a dynamic secret as Vault granted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LeaseGrant {
    pub id: String,
    pub duration: Duration,
    pub renewable: bool,
}

/// The result of one read.
pub(crate) struct ReadResult {
    pub data: SecretData,
    pub lease: Option<LeaseGrant>,
}

/// Reads `target` with `token`.
pub(crate) async fn read(
    transport: &Transport,
    token: &SecretText,
    target: &ReadTarget,
) -> Result<ReadResult, VaultError> {
    let query = target.version.map(|version| format!("version={version}"));
    let reply = transport
        .send(
            Method::GET,
            &target.path,
            query.as_deref(),
            Some(token),
            None,
            target.kv2,
        )
        .await
        .map_err(|err| match (err, target.version) {
            (VaultError::NotFound { path }, Some(version)) => {
                VaultError::VersionNotFound { path, version }
            }
            (other, _) => other,
        })?;
    if reply.status == StatusCode::NO_CONTENT || reply.body.is_null() {
        return Err(VaultError::NotFound {
            path: target.path.clone(),
        });
    }
    if target.kv2 {
        parse_kv2(transport, target, reply.status, &reply.body)
    } else {
        parse_other(target, &reply.body)
    }
}

fn parse_kv2(
    transport: &Transport,
    target: &ReadTarget,
    status: StatusCode,
    body: &Value,
) -> Result<ReadResult, VaultError> {
    let path = &target.path;
    let metadata = body.pointer("/data/metadata");
    let data = body.pointer("/data/data");
    let version = metadata
        .and_then(|m| m.get("version"))
        .and_then(Value::as_u64)
        .or(target.version)
        .unwrap_or(0);
    if let Some(metadata) = metadata.filter(|m| m.is_object()) {
        if metadata.get("destroyed").and_then(Value::as_bool) == Some(true) {
            return Err(VaultError::VersionDestroyed {
                path: path.clone(),
                version,
            });
        }
        let deleted = metadata
            .get("deletion_time")
            .and_then(Value::as_str)
            .is_some_and(|time| !time.is_empty());
        if deleted {
            return Err(VaultError::VersionDeleted {
                path: path.clone(),
                version,
            });
        }
    }
    if status == StatusCode::NOT_FOUND {
        return Err(transport.status_error(path, 404, &error_messages(body)));
    }
    match data {
        Some(Value::Object(map)) => Ok(ReadResult {
            data: SecretData {
                values: to_text_values(map),
            },
            lease: None,
        }),
        _ => Err(VaultError::InvalidResponse {
            path: path.clone(),
            reason: "`data.data` is not an object; is this a KV version 2 mount?".to_string(),
        }),
    }
}

fn parse_other(target: &ReadTarget, body: &Value) -> Result<ReadResult, VaultError> {
    let Some(Value::Object(map)) = body.get("data") else {
        return Err(VaultError::InvalidResponse {
            path: target.path.clone(),
            reason: "the response has no `data` object".to_string(),
        });
    };
    let lease_id = body
        .get("lease_id")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let lease = (!lease_id.is_empty()).then(|| LeaseGrant {
        id: lease_id.to_string(),
        duration: Duration::from_secs(
            body.get("lease_duration")
                .and_then(Value::as_u64)
                .unwrap_or(0),
        ),
        renewable: body
            .get("renewable")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    });
    Ok(ReadResult {
        data: SecretData {
            values: to_text_values(map),
        },
        lease,
    })
}

fn to_text_values(map: &serde_json::Map<String, Value>) -> BTreeMap<String, SecretBytes> {
    map.iter()
        .map(|(key, value)| {
            (
                key.clone(),
                SecretBytes::new(value_text(value).into_bytes()),
            )
        })
        .collect()
}

/// Converts a JSON value to the text a program receives: a string as it is, a number or
/// boolean as its JSON text, an object or array as compact JSON, and null as an empty string.
pub(crate) fn value_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_become_text() {
        assert_eq!(value_text(&json!("plain")), "plain");
        assert_eq!(value_text(&json!(5432)), "5432");
        assert_eq!(value_text(&json!(1.5)), "1.5");
        assert_eq!(value_text(&json!(true)), "true");
        assert_eq!(value_text(&json!(null)), "");
        assert_eq!(
            value_text(&json!({"host": "db", "ports": [1, 2]})),
            r#"{"host":"db","ports":[1,2]}"#
        );
    }

    #[test]
    fn other_read_keeps_lease() {
        let target = ReadTarget {
            path: "database/creds/app".into(),
            version: None,
            kv2: false,
        };
        let body = json!({
            "lease_id": "database/creds/app/abc",
            "lease_duration": 60,
            "renewable": true,
            "data": {"username": "u", "password": "p"},
        });
        let result = parse_other(&target, &body).unwrap();
        assert_eq!(result.data.len(), 2);
        assert_eq!(
            result.lease,
            Some(LeaseGrant {
                id: "database/creds/app/abc".into(),
                duration: Duration::from_secs(60),
                renewable: true,
            })
        );
        let kv1 = json!({"lease_id": "", "lease_duration": 2764800, "data": {"a": "b"}});
        assert_eq!(parse_other(&target, &kv1).unwrap().lease, None);
    }

    #[test]
    fn debug_lists_keys_only() {
        let data = SecretData {
            values: to_text_values(json!({"password": "hunter2"}).as_object().unwrap()),
        };
        let printed = format!("{data:?}");
        assert!(printed.contains("password"), "{printed}");
        assert!(!printed.contains("hunter2"), "{printed}");
    }
}

//! KV secrets engine endpoints, version 2
//! (<https://developer.hashicorp.com/vault/api-docs/secret/kv/kv-v2>) and version 1
//! (<https://developer.hashicorp.com/vault/api-docs/secret/kv/kv-v1>).

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::response::Envelope;
use super::{versions_field, weak_u64, ApiRequest, ApiResponse, Operation};
use crate::clock::rfc3339;
use crate::duration;
use crate::kv::{Kv2Engine, Kv2Read, Kv2Secret};
use crate::state::ServerState;

/// Handles `<mount>/<rest>` of a KV v2 mount.
pub(super) fn handle_v2(
    state: &mut ServerState,
    request: &ApiRequest,
    mount: &str,
    rest: &str,
) -> ApiResponse {
    let now = state.now();
    let namespace = state
        .namespaces
        .get_mut(&request.namespace)
        .expect("namespace was routed");
    let engine = namespace.kv2.get_mut(mount).expect("mount was routed");
    let op = request.operation;

    if rest == "config" {
        return match op {
            Operation::Read => Envelope::data(
                json!({
                    "cas_required": engine.cas_required,
                    "delete_version_after": "0s",
                    "max_versions": 0,
                }),
                "kv",
            )
            .ok(),
            _ => ApiResponse::unsupported_operation(),
        };
    }
    let Some((action, key)) = rest.split_once('/') else {
        return match (rest, op) {
            ("metadata", Operation::List) => list_v2(engine, ""),
            _ => ApiResponse::unsupported_path(),
        };
    };

    if action == "metadata" {
        if op == Operation::List {
            return list_v2(engine, key);
        }
        if key.is_empty() || key.ends_with('/') {
            return ApiResponse::unsupported_path();
        }
        return match op {
            Operation::Read => match engine.secrets.get(key) {
                Some(secret) => Envelope::data(metadata_json(secret), "kv").ok(),
                None => ApiResponse::not_found(),
            },
            Operation::Write => write_metadata(engine, request, key, now),
            Operation::Delete => {
                engine.delete_metadata(key);
                ApiResponse::no_content()
            }
            _ => ApiResponse::unsupported_operation(),
        };
    }

    // Every other endpoint names one secret: no empty key, no trailing slash.
    if key.is_empty() || key.ends_with('/') {
        return ApiResponse::unsupported_path();
    }
    match (action, op) {
        ("data", Operation::Read) => read_v2(engine, request, key, now),
        ("data", Operation::Write) => write_v2(engine, request, key, now),
        ("data", Operation::Delete) => {
            engine.delete_latest(key, now);
            ApiResponse::no_content()
        }
        // NOTE: `PATCH` (JSON merge patch) is not implemented and returns 405.
        ("data", _) => ApiResponse::unsupported_operation(),
        ("delete" | "undelete" | "destroy", Operation::Write) => {
            let versions = match request.json_body().and_then(|b| versions_field(&b)) {
                Ok(versions) => versions,
                Err(response) => return response,
            };
            match action {
                "delete" => engine.delete_versions(key, &versions, now),
                "undelete" => engine.undelete_versions(key, &versions, now),
                _ => engine.destroy_versions(key, &versions, now),
            }
            ApiResponse::no_content()
        }
        ("delete" | "undelete" | "destroy", _) => ApiResponse::unsupported_operation(),
        _ => ApiResponse::unsupported_path(),
    }
}

fn read_v2(
    engine: &Kv2Engine,
    request: &ApiRequest,
    key: &str,
    now: std::time::SystemTime,
) -> ApiResponse {
    let version = match request.query.get("version") {
        None => None,
        Some(raw) => match raw.parse::<u64>() {
            Ok(v) => Some(v),
            Err(_) => {
                let message = format!("error converting input {raw} for field \"version\"");
                return ApiResponse::bad_request(&message);
            }
        },
    };
    match engine.read(key, version, now) {
        Kv2Read::Missing => ApiResponse::not_found(),
        // Vault returns 404 with the full body, data null, for a deleted or destroyed version.
        Kv2Read::Gone(secret, number) => {
            let data = json!({ "data": null, "metadata": version_metadata(secret, number) });
            Envelope::data(data, "kv").into_response(404)
        }
        Kv2Read::Live(secret, number) => {
            let stored = secret.versions[&number].data.clone().unwrap_or_default();
            let data = json!({ "data": stored, "metadata": version_metadata(secret, number) });
            Envelope::data(data, "kv").ok()
        }
    }
}

fn write_v2(
    engine: &mut Kv2Engine,
    request: &ApiRequest,
    key: &str,
    now: std::time::SystemTime,
) -> ApiResponse {
    let body = match request.json_body() {
        Ok(body) => body,
        Err(response) => return response,
    };
    let data = match body.get("data") {
        None | Some(Value::Null) => return ApiResponse::bad_request("no data provided"),
        Some(Value::Object(data)) => data.clone(),
        Some(other) => {
            let message = format!("error converting input {other} for field \"data\"");
            return ApiResponse::bad_request(&message);
        }
    };
    let cas = match body.get("options").and_then(|o| o.get("cas")) {
        None | Some(Value::Null) => None,
        Some(raw) => match weak_u64(raw) {
            Some(cas) => Some(cas),
            None => return ApiResponse::bad_request("error parsing check-and-set parameter"),
        },
    };
    match engine.write(key, data, cas, now) {
        Ok(version) => {
            let secret = &engine.secrets[key];
            Envelope::data(version_metadata(secret, version), "kv").ok()
        }
        Err(e) => ApiResponse::bad_request(&e.to_string()),
    }
}

fn write_metadata(
    engine: &mut Kv2Engine,
    request: &ApiRequest,
    key: &str,
    now: std::time::SystemTime,
) -> ApiResponse {
    let body = match request.json_body() {
        Ok(body) => body,
        Err(response) => return response,
    };
    let secret = engine
        .secrets
        .entry(key.to_owned())
        .or_insert_with(|| Kv2Secret {
            versions: BTreeMap::new(),
            current_version: 0,
            created_time: now,
            updated_time: now,
            custom_metadata: None,
            cas_required: false,
        });
    if let Some(Value::Object(custom)) = body.get("custom_metadata") {
        let strings = custom
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_str().map(str::to_owned).unwrap_or(v.to_string()),
                )
            })
            .collect();
        secret.custom_metadata = Some(strings);
    }
    if let Some(required) = body.get("cas_required").and_then(Value::as_bool) {
        secret.cas_required = required;
    }
    secret.updated_time = now;
    ApiResponse::no_content()
}

fn list_v2(engine: &Kv2Engine, prefix: &str) -> ApiResponse {
    if !prefix.is_empty() && !prefix.ends_with('/') {
        return ApiResponse::not_found();
    }
    let keys = engine.list(prefix);
    if keys.is_empty() {
        return ApiResponse::not_found();
    }
    Envelope::data(json!({ "keys": keys }), "kv").ok()
}

/// Builds the version-specific metadata block of reads and writes.
fn version_metadata(secret: &Kv2Secret, number: u64) -> Value {
    let version = &secret.versions[&number];
    json!({
        "created_time": rfc3339(version.created_time),
        "custom_metadata": secret.custom_metadata,
        "deletion_time": version.deletion_time.map(rfc3339).unwrap_or_default(),
        "destroyed": version.destroyed,
        "version": number,
    })
}

/// Builds the `data` of a metadata read.
fn metadata_json(secret: &Kv2Secret) -> Value {
    let versions: Map<String, Value> = secret
        .versions
        .iter()
        .map(|(number, v)| {
            let entry = json!({
                "created_time": rfc3339(v.created_time),
                "deletion_time": v.deletion_time.map(rfc3339).unwrap_or_default(),
                "destroyed": v.destroyed,
            });
            (number.to_string(), entry)
        })
        .collect();
    json!({
        "cas_required": secret.cas_required,
        "created_time": rfc3339(secret.created_time),
        "current_version": secret.current_version,
        "custom_metadata": secret.custom_metadata,
        "delete_version_after": "0s",
        "max_versions": 0,
        "oldest_version": 0,
        "updated_time": rfc3339(secret.updated_time),
        "versions": versions,
    })
}

/// Handles `<mount>/<key>` of a KV v1 mount.
pub(super) fn handle_v1(
    state: &mut ServerState,
    request: &ApiRequest,
    mount: &str,
    key: &str,
) -> ApiResponse {
    let default_lease = state.options.kv1_lease_duration;
    let namespace = state
        .namespaces
        .get_mut(&request.namespace)
        .expect("namespace was routed");
    let engine = namespace.kv1.get_mut(mount).expect("mount was routed");

    if request.operation == Operation::List {
        if !key.is_empty() && !key.ends_with('/') {
            return ApiResponse::not_found();
        }
        let keys = engine.list(key);
        if keys.is_empty() {
            return ApiResponse::not_found();
        }
        let mut envelope = Envelope::data(json!({ "keys": keys }), "kv");
        envelope.lease_duration = default_lease;
        return envelope.ok();
    }
    if key.is_empty() {
        return ApiResponse::unsupported_path();
    }
    match request.operation {
        Operation::Read => {
            let Some(secret) = engine.secrets.get(key) else {
                return ApiResponse::not_found();
            };
            // A `ttl` key in the secret sets the advisory lease_duration.
            let lease = secret
                .get("ttl")
                .and_then(duration::parse_field)
                .map(|d: Duration| d.as_secs())
                .unwrap_or(default_lease);
            let mut envelope = Envelope::data(Value::Object(secret.clone()), "kv");
            envelope.lease_duration = lease;
            envelope.ok()
        }
        Operation::Write => {
            let body = match request.json_body() {
                Ok(body) => body,
                Err(response) => return response,
            };
            if body.is_empty() {
                return ApiResponse::bad_request("missing data fields");
            }
            engine.secrets.insert(key.to_owned(), body);
            ApiResponse::no_content()
        }
        Operation::Delete => {
            engine.secrets.remove(key);
            ApiResponse::no_content()
        }
        _ => ApiResponse::unsupported_operation(),
    }
}
